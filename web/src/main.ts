// The web app's entry point: routes (history API), the session and the
// websocket. Routes: /login, /register, / (to /chats/1), /chats/:id, and a
// 404 page for anything else.

import { api, ApiError, errorText, setUnauthorizedHandler, type User } from "./api";
import { loginPage, registerPage } from "./auth";
import { ChatPage } from "./chatpage";
import { h, replace } from "./dom";
import { notFound } from "./notfound";
import { Socket } from "./socket";

const HOME = "/chats/1";

const root = document.getElementById("app") ?? document.body;

let page: ChatPage | null = null;
/** where to go after logging in: the page a lost session interrupted */
let returnTo = HOME;
/** a note for the login page */
let loginNotice = "";
/** counts route changes, so that a slow one does not finish after a newer one */
let routeToken = 0;

const socket = new Socket(
  {
    event: (ev) => page?.onEvent(ev),
    state: (s, retryIn) => page?.setConnection(s, retryIn),
    sessionEnded: () => sessionLost("Your session has ended. Log in again."),
    notice: (message, code) => page?.showError(message, code),
  },
  async () => {
    // Does the session still hold? Asked without the 401 handler: the
    // socket decides what to do.
    const res = await fetch("/api/v1/me", { credentials: "same-origin" });
    return res.status !== 401;
  },
);

function navigate(path: string, opts: { replace?: boolean } = {}): void {
  if (opts.replace) history.replaceState(null, "", path);
  else if (path !== location.pathname) history.pushState(null, "", path);
  void route();
}

/** leaveApp ends what runs while logged in: the websocket and the chat page. */
function leaveApp(): void {
  socket.stop();
  page?.destroy();
  page = null;
}

function sessionLost(notice: string): void {
  if (page === null && (location.pathname === "/login" || location.pathname === "/register")) return;
  const here = location.pathname;
  leaveApp();
  if (here.startsWith("/chats/")) returnTo = here;
  loginNotice = notice;
  navigate("/login", { replace: true });
}

setUnauthorizedHandler(() => sessionLost("Log in to continue."));

function loggedIn(_user: User): void {
  const to = returnTo;
  returnTo = HOME;
  loginNotice = "";
  navigate(to);
}

/** set while a logout request is out, so that a second click does not send another */
let loggingOut = false;

async function logout(): Promise<void> {
  if (loggingOut) return;
  loggingOut = true;
  const from = page;
  // The websocket stops first: the server closes every websocket of the
  // session when it ends it, and that close must not race the answer.
  socket.stop();
  try {
    await api.logout();
  } catch (err) {
    // Only 401 (the session was over already) means logged out. Anything
    // else (503, no network, 403 csrf_rejected) leaves the session and its
    // cookie valid: stay logged in and say what went wrong.
    if (!(err instanceof ApiError && err.status === 401)) {
      loggingOut = false;
      if (page !== null && page === from) {
        socket.start();
        page.showError(`Logging out failed: ${errorText(err)}`, err instanceof ApiError ? err.code : "");
      }
      return;
    }
  }
  loggingOut = false;
  leaveApp();
  loginNotice = "You are logged out.";
  returnTo = HOME;
  navigate("/login");
}

async function enterApp(token: number): Promise<ChatPage | null> {
  if (page) return page;
  replace(root, h("p", { class: "loading", role: "status" }, "Loading…"));
  let me: User;
  try {
    me = (await api.me()).user;
  } catch (err) {
    if (token !== routeToken) return null;
    if (err instanceof ApiError && err.status === 401) return null; // sessionLost took over
    replace(
      root,
      h(
        "main",
        { class: "auth", id: "main" },
        h("h1", {}, "communications is not reachable"),
        h("p", { role: "alert", "data-testid": "error" }, errorText(err)),
        h("button", { type: "button", onclick: () => void route() }, "Try again"),
      ),
    );
    return null;
  }
  if (token !== routeToken) return null;
  page = new ChatPage(root, me, socket, { navigate: (p) => navigate(p), logout: () => void logout() });
  socket.start();
  return page;
}

async function route(): Promise<void> {
  const token = ++routeToken;
  const path = location.pathname;
  if (path === "/" || path === "") {
    navigate(HOME, { replace: true });
    return;
  }
  if (path === "/login" || path === "/register") {
    leaveApp();
    const opts = { loggedIn, notice: loginNotice };
    if (path === "/login") loginPage(root, opts);
    else registerPage(root, { loggedIn });
    return;
  }
  const m = /^\/chats\/([1-9][0-9]{0,15})\/?$/.exec(path);
  if (m) {
    const p = await enterApp(token);
    if (p && token === routeToken) await p.show(Number(m[1]));
    return;
  }
  leaveApp();
  replace(
    root,
    h("main", { class: "standalone", id: "main" }, notFound("Page not found", `There is no page at ${path}.`)),
  );
  root.querySelector<HTMLElement>("h1")?.focus();
}

// Links inside the app change the route without loading the page again.
document.addEventListener("click", (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target instanceof Element ? e.target.closest("a") : null;
  if (!a || a.target || a.hasAttribute("download")) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => void route());

void route();
