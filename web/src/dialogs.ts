// The create-chat and edit-chat dialogs: modal <dialog>s that take focus
// when they open, give it back to what opened them when they close, close
// on Escape, and show the server's error when it refuses.

import { api, ApiError, errorText, type Chat, type ChatChanges } from "./api";
import { field, h, showAlert, uid } from "./dom";

interface DialogSpec {
  title: string;
  testid: string;
  submitLabel: string;
  fields: HTMLElement[];
  /** runs the request; resolves when the dialog may close */
  submit(): Promise<void>;
}

function openDialog(spec: DialogSpec): HTMLDialogElement {
  const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
  const titleId = uid("dialog-title");
  const alert = h("p", { class: "alert", role: "alert", "data-testid": "dialog-error", hidden: true });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "dialog-submit" }, spec.submitLabel);
  const cancel = h("button", { type: "button", "data-testid": "dialog-cancel", onclick: () => dialog.close() }, "Cancel");
  const form = h(
    "form",
    { class: "dialog-form", novalidate: true },
    h("h2", { id: titleId }, spec.title),
    alert,
    ...spec.fields,
    h("div", { class: "actions" }, cancel, submit),
  );
  const dialog = h("dialog", { "aria-labelledby": titleId, "data-testid": spec.testid }, form);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (submit.disabled) return;
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    showAlert(alert, "");
    spec.submit().then(
      () => dialog.close(),
      (err: unknown) => {
        showAlert(alert, errorText(err), err instanceof ApiError ? err.code : "");
        submit.disabled = false;
        form.removeAttribute("aria-busy");
        alert.focus();
      },
    );
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected) opener.focus();
  });
  alert.tabIndex = -1;
  document.body.appendChild(dialog);
  dialog.showModal();
  return dialog;
}

/** usernames parses "bob, carol dave" into ["bob","carol","dave"]. */
export function usernames(s: string): string[] {
  return s
    .split(/[\s,]+/)
    .map((u) => u.trim())
    .filter((u) => u !== "");
}

/** openCreateChat asks for a new chat; created gets the chat the server made. */
export function openCreateChat(created: (c: Chat) => void): void {
  const name = h("input", { type: "text", name: "name", required: true, maxlength: 64, autocomplete: "off", autofocus: true, "data-testid": "chat-name-input" });
  const description = h("textarea", { name: "description", rows: 3, maxlength: 500, "data-testid": "chat-description-input" });
  const members = h("input", { type: "text", name: "members", autocomplete: "off", "data-testid": "chat-members-input" });
  openDialog({
    title: "New chat",
    testid: "create-chat-dialog",
    submitLabel: "Create chat",
    fields: [
      field("Name", name),
      field("Description (optional)", description),
      field("Members", members, "Usernames, separated by commas. You are a member anyway."),
    ],
    async submit() {
      const { chat } = await api.createChat(name.value, description.value, usernames(members.value));
      created(chat);
    },
  });
}

/** openEditChat edits a chat its creator owns; updated gets its new state. */
export function openEditChat(chat: Chat, updated: (c: Chat) => void): void {
  const name = h("input", { type: "text", name: "name", required: true, maxlength: 64, autocomplete: "off", autofocus: true, value: chat.name, "data-testid": "chat-name-input" });
  const description = h("textarea", { name: "description", rows: 3, maxlength: 500, "data-testid": "chat-description-input" });
  description.value = chat.description;
  const add = h("input", { type: "text", name: "add_members", autocomplete: "off", "data-testid": "chat-add-members-input" });
  const removable = (chat.members ?? []).filter((m) => m.id !== chat.creator_id);
  const removeBoxes = removable.map((m) => {
    const box = h("input", { type: "checkbox", value: m.username, "data-testid": "remove-member" });
    const id = uid("remove");
    box.id = id;
    return { box, row: h("li", {}, box, h("label", { for: id }, `Remove ${m.username}`)) };
  });
  const membersList = h(
    "fieldset",
    { class: "members" },
    h("legend", {}, "Members"),
    removable.length
      ? h("ul", { class: "member-list" }, ...removeBoxes.map((r) => r.row))
      : h("p", { class: "hint" }, "Nobody but you yet."),
  );
  openDialog({
    title: "Edit chat",
    testid: "edit-chat-dialog",
    submitLabel: "Save",
    fields: [
      field("Name", name),
      field("Description", description),
      membersList,
      field("Add members", add, "Usernames, separated by commas."),
    ],
    async submit() {
      const changes: ChatChanges = {};
      if (name.value.trim() !== chat.name) changes.name = name.value;
      if (description.value !== chat.description) changes.description = description.value;
      const adding = usernames(add.value);
      if (adding.length) changes.add_members = adding;
      const removing = removeBoxes.filter((r) => r.box.checked).map((r) => r.box.value);
      if (removing.length) changes.remove_members = removing;
      if (Object.keys(changes).length === 0) return;
      const res = await api.updateChat(chat.id, changes);
      updated(res.chat);
    },
  });
}

/** openDirect asks for a username and starts (or reopens) a direct chat with that person. */
export function openDirect(started: (c: Chat) => void): void {
  const username = h("input", {
    type: "text",
    name: "username",
    required: true,
    maxlength: 32,
    autocomplete: "off",
    autocapitalize: "none",
    spellcheck: "false",
    autofocus: true,
    "data-testid": "direct-username-input",
  });
  openDialog({
    title: "New direct message",
    testid: "direct-dialog",
    submitLabel: "Start",
    fields: [field("Username", username, "The person to write to. An existing conversation with them opens again.")],
    async submit() {
      const { chat } = await api.direct(username.value.trim());
      started(chat);
    },
  });
}

/**
 * openConfirmDelete asks before deleting a message. confirm sends the
 * deletion; it returns false when that is not possible now.
 */
export function openConfirmDelete(text: string, confirm: () => boolean): void {
  openDialog({
    title: "Delete this message?",
    testid: "delete-dialog",
    submitLabel: "Delete",
    fields: [
      h("blockquote", { class: "quote", "data-testid": "delete-quote" }, text),
      h("p", { class: "hint" }, "Everyone in the chat sees that a message was deleted, but not what it said."),
    ],
    async submit() {
      if (!confirm()) throw new Error("Not connected. Try again once the connection is back.");
    },
  });
}
