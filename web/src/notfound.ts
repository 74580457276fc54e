// The 404 page: for paths the app does not know, and for unknown chats.

import { h } from "./dom";

export function notFound(title: string, text: string, homeHref = "/chats/1"): HTMLElement {
  document.title = `${title} · communications`;
  return h(
    "section",
    { class: "not-found", "data-testid": "not-found" },
    h("p", { class: "big", "aria-hidden": "true" }, "404"),
    h("h1", { tabindex: -1 }, title),
    h("p", {}, text),
    h("p", {}, h("a", { href: homeHref, "data-testid": "go-home" }, "Go to the general chat")),
  );
}
