// The chat page: the person's chats beside the messages of one of them, the
// composer, and everything the websocket pushes. It stays in place while the
// person moves between chats; only the message pane is rebuilt.

import { api, ApiError, errorText, type Chat, type Message, type User } from "./api";
import { openCreateChat, openEditChat } from "./dialogs";
import { h, replace, showAlert } from "./dom";
import { MessageView } from "./messages";
import { notFound } from "./notfound";
import type { SendEvent, ServerEvent, Socket, SocketState } from "./socket";

export interface ChatPageHooks {
  navigate(path: string): void;
  logout(): void;
}

type OutboxState = "queued" | "sent" | "acked" | "failed";

interface OutboxEntry {
  ev: SendEvent;
  state: OutboxState;
  error?: string | undefined;
  retryable?: boolean;
  li?: HTMLLIElement;
  /** fails the send when no answer came in time */
  timer?: number | undefined;
}

/** how long a send written to an open connection waits for its ack or error */
const ACK_TIMEOUT_MS = 15_000;

interface ChatView {
  kind: "chat";
  chat: Chat;
  messages: MessageView;
  title: HTMLElement;
  description: HTMLElement;
  members: HTMLElement;
  edit: HTMLButtonElement;
}

type View = { kind: "loading" } | ChatView | { kind: "not-found" | "not-member" | "error" };

/** newId returns a random UUID, also where crypto.randomUUID is missing (plain http on a LAN address is no secure context). */
function newId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function byListOrder(a: Chat, b: Chat): number {
  if (a.everyone !== b.everyone) return a.everyone ? -1 : 1;
  return a.name.localeCompare(b.name, undefined, { sensitivity: "base" }) || a.id - b.id;
}

const MEDIUM = window.matchMedia("(min-width: 768px)");

export class ChatPage {
  private readonly chats = new Map<number, Chat>();
  private readonly unread = new Set<number>();
  private readonly outbox = new Map<string, OutboxEntry>();
  private currentId = 0;
  private loadToken = 0;
  private view: View = { kind: "loading" };
  /** counts hellos: one during a chat's first load means messages may have slipped between the two */
  private hellos = 0;
  /** live messages of the chat being loaded, merged once it is shown */
  private early: Message[] = [];
  /** the highest seq the app has of each chat (a reconnect resumes from it) */
  private readonly lastSeq = new Map<number, number>();

  private readonly shell: HTMLElement;
  private readonly layout: HTMLElement;
  private readonly toggle: HTMLButtonElement;
  private readonly list = h("ul", { class: "chat-list", "data-testid": "chat-list" });
  private readonly main = h("main", { class: "pane", id: "main" });
  private readonly banner = h("p", { class: "banner-text", role: "alert", "data-testid": "error" });
  private readonly bannerBox: HTMLElement;
  private readonly connText = h("span", { class: "conn-text" }, "Connecting…");
  private readonly conn = h("span", { class: "conn", role: "status", "data-testid": "connection", "data-state": "connecting" }, this.connText);
  private readonly meName: HTMLElement;
  private readonly onKey = (e: KeyboardEvent) => {
    if (e.key === "Escape" && this.layout.classList.contains("sidebar-open")) {
      this.setSidebar(false);
      this.toggle.focus();
    }
  };

  constructor(
    private readonly root: HTMLElement,
    private me: User,
    private readonly socket: Socket,
    private readonly hooks: ChatPageHooks,
  ) {
    this.toggle = h(
      "button",
      { type: "button", class: "toggle", "aria-controls": "sidebar", "aria-expanded": "false", "data-testid": "toggle-chats", onclick: () => this.setSidebar(!this.layout.classList.contains("sidebar-open")) },
      "Chats",
    );
    this.meName = h("span", { class: "me", "data-testid": "current-user" }, me.username);
    this.bannerBox = h(
      "div",
      { class: "banner", hidden: true },
      this.banner,
      h("button", { type: "button", class: "dismiss", "aria-label": "Dismiss the error", onclick: () => this.showError("") }, "×"),
    );
    // The alert region exists from the start (empty) so that screen
    // readers announce what is put in it.
    this.banner.textContent = "";
    const sidebar = h(
      "nav",
      { class: "sidebar", id: "sidebar", "aria-label": "Chats", "data-testid": "sidebar" },
      h(
        "div",
        { class: "sidebar-head" },
        h("h2", {}, "Chats"),
        h("button", { type: "button", class: "primary", "data-testid": "new-chat", onclick: () => this.createChat() }, "New chat"),
      ),
      this.list,
    );
    this.layout = h("div", { class: "layout" }, sidebar, this.main);
    this.shell = h(
      "div",
      { class: "app", "data-testid": "app" },
      h(
        "header",
        { class: "topbar" },
        this.toggle,
        h("span", { class: "brand" }, "communications"),
        h("span", { class: "spacer" }),
        this.conn,
        h("span", { class: "who" }, h("span", { class: "visually-hidden" }, "Logged in as "), this.meName),
        h("button", { type: "button", "data-testid": "logout", onclick: () => this.hooks.logout() }, "Log out"),
      ),
      this.bannerBox,
      this.layout,
    );
    replace(this.root, this.shell);
    this.socket.resumeFrom(() => this.positions());
    document.addEventListener("keydown", this.onKey);
    MEDIUM.addEventListener("change", this.onMedium);
    this.loadChats();
  }

  destroy(): void {
    this.socket.resumeFrom(() => new Map());
    for (const entry of this.outbox.values()) this.clearAckTimer(entry);
    document.removeEventListener("keydown", this.onKey);
    MEDIUM.removeEventListener("change", this.onMedium);
    this.loadToken++;
  }

  private onMedium = () => this.setSidebar(false);

  private setSidebar(open: boolean): void {
    this.layout.classList.toggle("sidebar-open", open);
    this.toggle.setAttribute("aria-expanded", String(open));
    if (open) this.list.querySelector<HTMLElement>("a[aria-current=page], a")?.focus();
  }

  /** showError puts a message in the page's alert banner; "" clears it. */
  showError(text: string, code = ""): void {
    showAlert(this.banner, text, code);
    this.bannerBox.hidden = text === "";
  }

  setConnection(state: SocketState, retryIn?: number): void {
    this.conn.dataset["state"] = state;
    this.connText.textContent =
      state === "open"
        ? "Connected"
        : state === "connecting"
          ? "Connecting…"
          : state === "waiting"
            ? `Offline, retrying in ${Math.max(1, Math.round((retryIn ?? 0) / 1000))} s`
            : "Offline";
  }

  // ---- resuming ----

  private noteSeq(chatId: number, seq: number): void {
    if (seq > (this.lastSeq.get(chatId) ?? 0)) this.lastSeq.set(chatId, seq);
  }

  /** positions lists the last seq held of each chat, the chat on screen first. */
  private positions(): Map<number, number> {
    const out = new Map<number, number>();
    const view = this.view;
    if (view.kind === "chat" && view.messages.isLoaded) {
      out.set(view.chat.id, Math.max(view.messages.maxSeq, this.lastSeq.get(view.chat.id) ?? 0));
    }
    for (const [chat, seq] of this.lastSeq) if (!out.has(chat)) out.set(chat, seq);
    return out;
  }

  // ---- the chat list ----

  private async loadChats(): Promise<void> {
    try {
      const { chats } = await api.chats();
      this.chats.clear();
      for (const c of chats) this.chats.set(c.id, c);
      this.renderList();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      this.showError(`The chats could not be loaded: ${errorText(err)}`, err instanceof ApiError ? err.code : "");
    }
  }

  private renderList(): void {
    const focused = document.activeElement instanceof HTMLElement && this.list.contains(document.activeElement) ? document.activeElement.dataset["chatId"] : undefined;
    const items = [...this.chats.values()].sort(byListOrder).map((c) => {
      const unread = this.unread.has(c.id);
      const a = h(
        "a",
        {
          href: `/chats/${c.id}`,
          "data-testid": "chat-link",
          "data-chat-id": c.id,
          "aria-current": c.id === this.currentId ? "page" : null,
          class: unread ? "unread" : null,
        },
        h("span", { class: "name" }, c.name),
        unread ? h("span", { class: "dot" }, h("span", { class: "visually-hidden" }, ", new messages")) : null,
      );
      a.addEventListener("click", () => this.setSidebar(false));
      return h("li", {}, a);
    });
    replace(this.list, ...items);
    if (items.length === 0) replace(this.list, h("li", { class: "hint" }, "No chats yet."));
    if (focused) this.list.querySelector<HTMLElement>(`a[data-chat-id="${focused}"]`)?.focus();
  }

  private upsertChat(c: Chat): void {
    this.chats.set(c.id, c);
    this.renderList();
    if (this.view.kind === "chat" && this.view.chat.id === c.id) {
      this.view.chat = c;
      this.renderChatHead();
    }
  }

  private createChat(): void {
    openCreateChat((chat) => {
      this.upsertChat(chat);
      this.hooks.navigate(`/chats/${chat.id}`);
    });
  }

  // ---- one chat ----

  /** show loads and shows chat id. */
  async show(id: number): Promise<void> {
    if (this.view.kind === "chat") this.noteSeq(this.view.chat.id, this.view.messages.maxSeq);
    this.currentId = id;
    const token = ++this.loadToken;
    this.unread.delete(id);
    this.renderList();
    this.setSidebar(false);
    this.view = { kind: "loading" };
    this.early = [];
    const hellos = this.hellos;
    const known = this.chats.get(id);
    document.title = `${known ? known.name : "Chat"} · communications`;
    replace(this.main, h("p", { class: "loading", role: "status" }, "Loading messages…"));
    try {
      const [{ chat }, { messages }] = await Promise.all([api.chat(id), api.messages(id, { limit: 50 })]);
      if (token !== this.loadToken) return;
      this.chats.set(chat.id, chat);
      this.renderList();
      const view = this.renderChat(chat);
      view.messages.merge(messages);
      const early = this.early;
      this.early = [];
      for (const m of early) this.mergeLive(view, m);
      // Connected while the page was on its way: what was sent in between
      // may be in neither.
      if (this.hellos !== hellos) await this.reloadLatest();
    } catch (err) {
      if (token !== this.loadToken) return;
      this.renderFailure(id, err);
    }
  }

  private renderFailure(id: number, err: unknown): void {
    if (err instanceof ApiError && err.status === 401) return; // on the way to /login
    if (err instanceof ApiError && err.status === 404) {
      this.view = { kind: "not-found" };
      replace(this.main, notFound("Chat not found", `There is no chat with the id ${id}.`));
      this.focusHeading();
      return;
    }
    if (err instanceof ApiError && err.status === 403) {
      this.view = { kind: "not-member" };
      document.title = "Not a member · communications";
      replace(
        this.main,
        h(
          "section",
          { class: "not-member", "data-testid": "not-member" },
          h("h1", { tabindex: -1 }, "You are not a member of this chat"),
          h("p", { role: "alert", "data-code": err.code }, err.message),
          h("p", {}, "Ask the chat's creator to add you. ", h("a", { href: "/chats/1" }, "Go to the general chat")),
        ),
      );
      this.focusHeading();
      return;
    }
    this.view = { kind: "error" };
    document.title = "Error · communications";
    replace(
      this.main,
      h(
        "section",
        { class: "load-error", "data-testid": "load-error" },
        h("h1", {}, "This chat could not be loaded"),
        h("p", { role: "alert", "data-code": err instanceof ApiError ? err.code : null }, errorText(err)),
        h("button", { type: "button", onclick: () => this.show(id) }, "Try again"),
      ),
    );
  }

  private focusHeading(): void {
    this.main.querySelector<HTMLElement>("h1")?.focus();
  }

  private renderChat(chat: Chat): ChatView {
    const messages = new MessageView(`Messages in ${chat.name}`, this.me.id, (before) => this.loadOlder(before));
    const title = h("h1", { "data-testid": "chat-title", tabindex: -1 });
    const description = h("p", { class: "description", "data-testid": "chat-description" });
    const members = h("p", { class: "members-line", "data-testid": "chat-members" });
    const edit = h("button", { type: "button", "data-testid": "edit-chat", hidden: true, onclick: () => this.editChat() }, "Edit chat");
    const view: ChatView = { kind: "chat", chat, messages, title, description, members, edit };
    this.view = view;

    const input = h("textarea", {
      id: "composer-input",
      name: "text",
      rows: 1,
      placeholder: "Write a message",
      "aria-describedby": "composer-hint",
      "data-testid": "composer-input",
      enterkeyhint: "send",
    });
    const form = h(
      "form",
      { class: "composer", "data-testid": "composer" },
      h("label", { for: "composer-input", class: "visually-hidden" }, "Message"),
      input,
      h("button", { type: "submit", class: "primary", "data-testid": "send" }, "Send"),
      h("p", { id: "composer-hint", class: "visually-hidden" }, "Enter sends, Shift+Enter starts a new line."),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (this.sendText(chat.id, input.value)) input.value = "";
      input.focus();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        form.requestSubmit();
      }
    });

    replace(
      this.main,
      h("header", { class: "chat-head" }, h("div", { class: "chat-head-text" }, title, description, members), edit),
      h("div", { class: "messages-wrap" }, messages.el, messages.jump),
      form,
    );
    this.renderChatHead();
    for (const entry of this.outbox.values()) if (entry.ev.chat_id === chat.id) this.renderPending(entry);
    return view;
  }

  private renderChatHead(): void {
    if (this.view.kind !== "chat") return;
    const { chat, title, description, members, edit, messages } = this.view;
    title.textContent = chat.name;
    description.textContent = chat.description;
    description.hidden = chat.description === "";
    members.textContent = chat.everyone
      ? "Everyone is in this chat"
      : `${chat.members?.length ?? 0} members: ${(chat.members ?? []).map((m) => m.username).join(", ")}`;
    edit.hidden = !this.isCreator(chat);
    messages.setLabel(`Messages in ${chat.name}`);
    document.title = `${chat.name} · communications`;
  }

  private isCreator(chat: Chat): boolean {
    return !chat.everyone && chat.creator_id !== undefined && chat.creator_id === this.me.id;
  }

  private editChat(): void {
    if (this.view.kind !== "chat" || !this.isCreator(this.view.chat)) return;
    openEditChat(this.view.chat, (c) => this.upsertChat(c));
  }

  private async loadOlder(before: number): Promise<void> {
    if (this.view.kind !== "chat") return;
    const { messages, chat } = this.view;
    messages.setOlderLoading(true);
    try {
      const res = await api.messages(chat.id, { before, limit: 50 });
      if (this.view.kind !== "chat" || this.view.messages !== messages) return;
      messages.setOlderLoading(false);
      messages.merge(res.messages);
    } catch (err) {
      messages.setOlderLoading(false, `Older messages could not be loaded: ${errorText(err)}`);
    }
  }

  /** reloadLatest merges the chat's latest page: after every (re)connect, messages may have been missed. */
  private async reloadLatest(): Promise<void> {
    const view = this.view;
    if (view.kind === "error") {
      await this.show(this.currentId);
      return;
    }
    if (view.kind !== "chat") return;
    const token = this.loadToken;
    try {
      const { messages } = await api.messages(view.chat.id, { limit: 50 });
      if (token !== this.loadToken) return;
      const first = messages[0];
      if (first && view.messages.maxSeq > 0 && first.seq > view.messages.maxSeq + 1) view.messages.clear();
      view.messages.merge(messages);
    } catch (err) {
      if (token !== this.loadToken) return;
      if (err instanceof ApiError && (err.status === 403 || err.status === 404)) this.renderFailure(view.chat.id, err);
      else if (!(err instanceof ApiError && err.status === 401)) this.showError(`Messages could not be reloaded: ${errorText(err)}`);
    }
  }

  /** fillGap fetches the messages between after and before that the live stream skipped. */
  private async fillGap(view: ChatView, after: number, before: number): Promise<void> {
    const missing = before - after - 1;
    if (missing > 100) {
      await this.reloadLatest();
      return;
    }
    try {
      const { messages } = await api.messages(view.chat.id, { before, limit: missing });
      if (this.view === view) view.messages.merge(messages);
    } catch {
      // The next reconnect reloads the latest page anyway.
    }
  }

  // ---- sending ----

  private sendText(chatId: number, text: string): boolean {
    if (text.trim() === "") return false;
    const id = newId();
    const entry: OutboxEntry = { ev: { type: "send", id, chat_id: chatId, client_msg_id: id, text }, state: "queued" };
    this.outbox.set(id, entry);
    this.renderPending(entry);
    this.transmit(entry);
    return true;
  }

  private transmit(entry: OutboxEntry): void {
    this.clearAckTimer(entry);
    entry.error = undefined;
    if (this.socket.send(entry.ev)) {
      entry.state = "sent";
      // No answer in time on an open connection: the send failed. After a
      // disconnect the next hello resends it (and starts a new timer).
      entry.timer = window.setTimeout(() => {
        entry.timer = undefined;
        if (entry.state !== "sent" || !this.socket.open || this.outbox.get(entry.ev.client_msg_id) !== entry) return;
        entry.state = "failed";
        entry.error = "no answer from the server";
        entry.retryable = true;
        this.updatePending(entry);
      }, ACK_TIMEOUT_MS);
    } else entry.state = "queued";
    this.updatePending(entry);
  }

  private clearAckTimer(entry: OutboxEntry): void {
    if (entry.timer !== undefined) window.clearTimeout(entry.timer);
    entry.timer = undefined;
  }

  private renderPending(entry: OutboxEntry): void {
    if (this.view.kind !== "chat" || this.view.chat.id !== entry.ev.chat_id) return;
    entry.li = this.view.messages.addPending(entry.ev.client_msg_id, entry.ev.text);
    this.updatePending(entry);
  }

  private updatePending(entry: OutboxEntry): void {
    const li = entry.li;
    if (!li || !li.isConnected) return;
    const status = li.querySelector<HTMLElement>("[data-testid=message-state]");
    if (!status) return;
    // What the person sees: sending (queued, or written without an answer
    // yet), sent (acknowledged) or failed.
    const shown = entry.state === "acked" ? "sent" : entry.state === "failed" ? "failed" : "sending";
    li.dataset["state"] = shown;
    status.dataset["state"] = shown;
    li.dataset["outbox"] = entry.state;
    li.querySelector(".pending-actions")?.remove();
    switch (entry.state) {
      case "queued":
        status.textContent = "Sending… (waiting for the connection)";
        break;
      case "sent":
        status.textContent = "Sending…";
        break;
      case "acked":
        status.textContent = "Sent";
        break;
      case "failed": {
        status.textContent = `Not sent: ${entry.error ?? "error"}`;
        const actions = h("div", { class: "pending-actions" });
        // A retry sends the same client_msg_id: the server never stores it twice.
        actions.appendChild(h("button", { type: "button", "data-testid": "retry", onclick: () => this.transmit(entry) }, "Retry"));
        actions.appendChild(
          h("button", { type: "button", onclick: () => this.dropPending(entry) }, "Dismiss"),
        );
        li.appendChild(actions);
        break;
      }
    }
  }

  private dropPending(entry: OutboxEntry): void {
    this.clearAckTimer(entry);
    this.outbox.delete(entry.ev.client_msg_id);
    if (this.view.kind === "chat") this.view.messages.removePending(entry.ev.client_msg_id);
  }

  // ---- websocket events ----

  onEvent(ev: ServerEvent): void {
    switch (ev.type) {
      case "hello":
        this.hellos++;
        this.me = { id: ev.user_id, username: ev.username };
        this.meName.textContent = ev.username;
        if (this.view.kind === "chat") this.renderChatHead();
        // Whatever happened while disconnected: chats, messages, sends
        // not yet acknowledged (resent with the same client_msg_id, which
        // the server never stores twice).
        void this.loadChats();
        // A resumed chat gets what it missed replayed on this connection;
        // any other needs its latest page.
        if (!(this.view.kind === "chat" && this.socket.resuming.has(this.view.chat.id))) void this.reloadLatest();
        for (const entry of this.outbox.values()) {
          if (entry.state === "queued" || entry.state === "sent") this.transmit(entry);
        }
        break;
      case "ack": {
        const entry = this.outbox.get(ev.client_msg_id);
        if (entry) {
          this.clearAckTimer(entry);
          entry.state = "acked";
          this.updatePending(entry);
        }
        break;
      }
      case "resumed": {
        // The replay is complete. A chat on screen that was resumed but is
        // not in the answer is one the person is no longer in: reloading
        // shows why.
        const view = this.view;
        if (view.kind === "chat" && this.socket.resuming.has(view.chat.id) && ev.positions?.[String(view.chat.id)] === undefined) {
          void this.reloadLatest();
        }
        break;
      }
      case "message":
        this.onMessage(ev);
        break;
      case "error": {
        const entry = ev.id !== undefined ? this.outbox.get(ev.id) : undefined;
        if (entry) {
          this.clearAckTimer(entry);
          entry.state = "failed";
          entry.error = ev.message;
          entry.retryable = ev.retryable;
          this.updatePending(entry);
        }
        this.showError(ev.message, ev.code);
        break;
      }
      case "chat":
        this.onChat(ev.chat);
        break;
      case "chat_removed":
        this.onChatRemoved(ev.chat_id);
        break;
      case "pong":
        break;
    }
  }

  private onMessage(m: Message): void {
    this.noteSeq(m.chat_id, m.seq);
    if (m.sender_id === this.me.id) {
      const entry = this.outbox.get(m.client_msg_id);
      if (entry && entry.ev.chat_id === m.chat_id) {
        this.clearAckTimer(entry);
        this.outbox.delete(m.client_msg_id);
      }
    }
    const view = this.view;
    if (view.kind === "chat" && view.chat.id === m.chat_id) {
      this.mergeLive(view, m);
      return;
    }
    if (view.kind === "loading" && m.chat_id === this.currentId) {
      this.early.push(m);
      return;
    }
    if (this.chats.has(m.chat_id) && m.sender_id !== this.me.id && !this.unread.has(m.chat_id)) {
      this.unread.add(m.chat_id);
      this.renderList();
    }
  }

  /** mergeLive shows a message from the websocket and fetches any it skipped. */
  private mergeLive(view: ChatView, m: Message): void {
    const before = view.messages.maxSeq;
    const loaded = view.messages.isLoaded;
    view.messages.merge([m]);
    if (loaded && m.seq > before + 1) void this.fillGap(view, before, m.seq);
  }

  private onChat(c: Chat): void {
    this.upsertChat(c);
    if (c.id === this.currentId && this.view.kind === "not-member") void this.show(c.id);
  }

  private onChatRemoved(id: number): void {
    this.chats.delete(id);
    this.unread.delete(id);
    this.lastSeq.delete(id);
    for (const [k, e] of this.outbox) {
      if (e.ev.chat_id !== id) continue;
      this.clearAckTimer(e);
      this.outbox.delete(k);
    }
    this.renderList();
    if (id === this.currentId && this.view.kind === "chat") {
      this.loadToken++;
      this.renderFailure(id, new ApiError(403, "not_a_member", "You were removed from this chat."));
    }
  }
}
