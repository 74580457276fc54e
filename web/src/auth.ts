// The login and register pages.

import { api, ApiError, errorText, type User } from "./api";
import { field, h, replace, showAlert } from "./dom";

export interface AuthPageOptions {
  /** a note shown above the form, e.g. that the session ended */
  notice?: string;
  /** called once the person is logged in */
  loggedIn(user: User): void;
}

function authPage(kind: "login" | "register", root: HTMLElement, opts: AuthPageOptions): void {
  const isLogin = kind === "login";
  const title = isLogin ? "Log in" : "Create an account";
  document.title = `${title} · communications`;
  const alert = h("p", { class: "alert", role: "alert", "data-testid": "auth-error", hidden: true, tabindex: -1 });
  const username = h("input", {
    type: "text",
    name: "username",
    required: true,
    autocomplete: "username",
    autocapitalize: "none",
    spellcheck: "false",
    minlength: 3,
    maxlength: 32,
    "data-testid": "username",
  });
  const password = h("input", {
    type: "password",
    name: "password",
    required: true,
    autocomplete: isLogin ? "current-password" : "new-password",
    minlength: isLogin ? null : 8,
    maxlength: 256,
    "data-testid": "password",
  });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "auth-submit" }, isLogin ? "Log in" : "Create account");
  const form = h(
    "form",
    { class: "auth-form", novalidate: true, "data-testid": `${kind}-form` },
    alert,
    field("Username", username, isLogin ? undefined : "3 to 32 letters, digits, _, - or ."),
    field("Password", password, isLogin ? undefined : "At least 8 characters."),
    submit,
  );
  const heading = h("h1", { tabindex: -1 }, title);
  replace(
    root,
    h(
      "main",
      { class: "auth", id: "main" },
      h("p", { class: "brand" }, "communications"),
      heading,
      opts.notice ? h("p", { class: "notice", role: "status", "data-testid": "auth-notice" }, opts.notice) : null,
      form,
      isLogin
        ? h("p", {}, "New here? ", h("a", { href: "/register", "data-testid": "to-register" }, "Create an account"))
        : h("p", {}, "Have an account? ", h("a", { href: "/login", "data-testid": "to-login" }, "Log in")),
    ),
  );
  username.focus();

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (submit.disabled) return;
    const name = username.value.trim();
    if (name === "" || password.value === "") {
      showAlert(alert, "Enter a username and a password.");
      alert.focus();
      return;
    }
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    showAlert(alert, "");
    (async () => {
      if (!isLogin) await api.register(name, password.value);
      const { user } = await api.login(name, password.value);
      opts.loggedIn(user);
    })().catch((err: unknown) => {
      showAlert(alert, errorText(err), err instanceof ApiError ? err.code : "");
      submit.disabled = false;
      form.removeAttribute("aria-busy");
      alert.focus();
    });
  });
}

export function loginPage(root: HTMLElement, opts: AuthPageOptions): void {
  authPage("login", root, opts);
}

export function registerPage(root: HTMLElement, opts: AuthPageOptions): void {
  authPage("register", root, opts);
}
