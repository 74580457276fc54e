// Building DOM nodes. Text always goes in as text nodes: nothing in the app
// assigns innerHTML, so text from the server can never become markup.

export type Child = Node | string | number | null | undefined | false;

type Listener = (ev: Event) => void;
export type Attrs = Record<string, string | number | boolean | Listener | null | undefined>;

/**
 * h creates an element. Attributes named onX add an event listener for X;
 * true sets a boolean attribute, false, null and undefined leave it out.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, ...children);
  return el;
}

/** append adds children to el, strings as text nodes. */
export function append(el: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
}

/** replace empties el and adds the children. */
export function replace(el: Node, ...children: Child[]): void {
  while (el.firstChild) el.removeChild(el.firstChild);
  append(el, ...children);
}

/**
 * showAlert puts text in an alert region and shows it; "" hides it. code,
 * the server's error code, is kept in data-code.
 */
export function showAlert(el: HTMLElement, text: string, code = ""): void {
  el.textContent = text;
  el.hidden = text === "";
  if (code) el.dataset["code"] = code;
  else delete el.dataset["code"];
}

let ids = 0;
/** uid returns an id unique in the page, for label and aria wiring. */
export function uid(prefix: string): string {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** field is a labelled input, textarea or other control in a wrapper. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id || uid("f");
  control.id = id;
  const wrap = h("div", { class: "field" }, h("label", { for: id }, label), control);
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    append(wrap, h("p", { class: "hint", id: hintId }, hint));
  }
  return wrap;
}
