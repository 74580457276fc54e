// The chat page: the person's chats beside the messages of one of them, the
// composer, and everything the websocket pushes. It stays in place while the
// person moves between chats; only the message pane is rebuilt.

import { api, ApiError, errorText, MAX_UNREAD, type Chat, type Message, type User } from "./api";
import { openConfirmDelete, openCreateChat, openDirect, openEditChat } from "./dialogs";
import { h, replace, showAlert } from "./dom";
import { MessageView } from "./messages";
import { notFound } from "./notfound";
import type { ChangeEvent, LiveEvent, ReadPosition, SendEvent, ServerEvent, Socket, SocketState } from "./socket";

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
  /** sent by the drain after a hello: a rate_limited answer queues it again */
  drained?: boolean;
}

/**
 * the sends left over from the last connection go out one per this long
 * after a hello (about 14 a second): they share the connection's rate limit
 * (20 a second, a burst of 40) with view and read
 */
const DRAIN_EVERY_MS = 70;
/** the drain pauses this long after a rate_limited answer */
const DRAIN_PAUSE_MS = 1_000;
/** how long a send written to an open connection waits for its ack or error */
const ACK_TIMEOUT_MS = 15_000;
/** the read position goes out this long after the newest message came into view */
const READ_DEBOUNCE_MS = 500;
/** typing events go out at most this often while the person types */
const TYPING_EVERY_MS = 2_000;
/** "bob is typing…" shows this long after bob's last typing event */
const TYPING_SHOWN_MS = 4_000;
/** the presence line names at most this many people */
const PRESENCE_NAMES = 8;
/** ids of the events sent in the background start with these: their errors are not the person's business */
const LIVE_ID_PREFIXES = ["read-", "typing-", "view-"];
/** a refused view is sent again after 1, 2 and 3 s */
const VIEW_RETRIES = 3;
const VIEW_RETRY_MS = 1_000;
/** a view refused for a passing reason is sent again after at most this long */
const VIEW_RETRY_MAX_MS = 15_000;

/** an edit or deletion of one's own message, until its entry arrives */
interface ChangeEntry {
  ev: ChangeEvent;
  acked: boolean;
  /** after the ack: when the change's entry has not come by then, the message's state is read from history */
  timer?: number | undefined;
}

/**
 * how long an acknowledged edit or deletion waits for its entry; the server
 * drops a change that lost a race (say, an edit of a message deleted
 * meanwhile) although it acknowledged it
 */
const CHANGE_ENTRY_TIMEOUT_MS = 10_000;

/** unreadLabel shows an unread count, capped the way the server caps it. */
export function unreadLabel(n: number): string {
  return n >= MAX_UNREAD ? `${MAX_UNREAD - 1}+` : String(n);
}

/** what the person reads for a rate_limited error */
const RATE_LIMITED_TEXT = "You are sending too fast. Wait a moment, then try again.";

interface ChatView {
  kind: "chat";
  chat: Chat;
  messages: MessageView;
  title: HTMLElement;
  description: HTMLElement;
  members: HTMLElement;
  presence: HTMLElement;
  typing: HTMLElement;
  edit: HTMLButtonElement;
  /** holes the live stream left that history has not filled yet, by the seq below each */
  gaps: Map<number, Gap>;
}

interface Gap {
  before: number;
  tries: number;
  timer?: number | undefined;
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


const MEDIUM = window.matchMedia("(min-width: 768px)");

export class ChatPage {
  private readonly chats = new Map<number, Chat>();
  private readonly outbox = new Map<string, OutboxEntry>();
  /** the next step of the outbox's drain, while one runs */
  private drainTimer: number | undefined;
  /** edits and deletions sent, by client_msg_id */
  private readonly changes = new Map<string, ChangeEntry>();
  /** per chat, the seqs of messages counted as unread here while the chat list was on its way */
  private readonly liveCounted = new Map<number, number[]>();
  /** chat list requests on their way */
  private listsLoading = 0;
  /** the highest read position sent on this connection, per chat */
  private readonly readSent = new Map<number, number>();
  private readTimer: number | undefined;
  /** the newest seq seen at the bottom of the chat on screen: the read position the timer sends */
  private readUpTo = 0;
  /** the online members of the chat on screen */
  private readonly online = new Map<number, string>();
  /** whether the server said who is online (a server without presence never does) */
  private presenceKnown = false;
  /** how many members of the chat on screen are online, the person included: named in online or not */
  private onlineTotal = 0;
  /** who types in the chat on screen, with the timer that ends it */
  private readonly typists = new Map<number, { username: string; timer: number }>();
  private lastTypingSent = 0;
  /** the chat and id of the last view sent, its retries and the timer of the next */
  private viewChat = 0;
  private viewId = "";
  private viewRetries = 0;
  private viewRetry: number | undefined;
  /** the chat of each read position on its way, by request id */
  private readonly readIds = new Map<string, number>();
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
      h("div", { class: "sidebar-head" }, h("h2", {}, "Chats")),
      h(
        "div",
        { class: "sidebar-actions" },
        h("button", { type: "button", class: "primary", "data-testid": "new-chat", onclick: () => this.createChat() }, "New chat"),
        h("button", { type: "button", "data-testid": "new-direct", onclick: () => this.startDirect() }, "New direct message"),
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
    document.addEventListener("visibilitychange", this.onVisible);
    MEDIUM.addEventListener("change", this.onMedium);
    this.loadChats();
  }

  destroy(): void {
    this.socket.resumeFrom(() => new Map());
    for (const entry of this.outbox.values()) this.clearAckTimer(entry);
    window.clearTimeout(this.drainTimer);
    this.leaveView();
    document.removeEventListener("keydown", this.onKey);
    document.removeEventListener("visibilitychange", this.onVisible);
    MEDIUM.removeEventListener("change", this.onMedium);
    this.loadToken++;
  }

  /** coming back to the tab shows the newest messages again: they count as read */
  private onVisible = () => {
    if (document.visibilityState === "visible" && this.view.kind === "chat" && this.view.messages.atBottom()) this.noteNewestSeen();
  };

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
      // Below a hole not filled yet, so that the replay fills it.
      const floor = view.gaps.size > 0 ? Math.min(...view.gaps.keys()) : Math.max(view.messages.maxSeq, this.lastSeq.get(view.chat.id) ?? 0);
      out.set(view.chat.id, floor);
    }
    for (const [chat, seq] of this.lastSeq) if (!out.has(chat)) out.set(chat, seq);
    return out;
  }

  // ---- the chat list ----

  private async loadChats(): Promise<void> {
    // Messages counted while the list is on its way may be in its counts or not: their seqs tell.
    this.liveCounted.clear();
    this.listsLoading++;
    try {
      const { chats } = await api.chats();
      const before = new Map(this.chats);
      this.chats.clear();
      for (const c of chats) {
        const counted = (this.liveCounted.get(c.id) ?? []).filter((seq) => seq > (c.last_seq ?? 0) && seq > (c.read_seq ?? 0)).length;
        c.unread = Math.min(MAX_UNREAD, (c.unread ?? 0) + counted);
        const old = before.get(c.id);
        if (old) {
          c.last_seq = Math.max(c.last_seq ?? 0, old.last_seq ?? 0);
          if ((old.read_seq ?? 0) > (c.read_seq ?? 0)) {
            c.read_seq = old.read_seq ?? 0;
            c.unread = Math.min(c.unread, old.unread ?? 0);
          }
        }
        this.chats.set(c.id, c);
      }
      this.liveCounted.clear();
      this.renderList();
      if (this.view.kind === "chat") {
        const shown = this.chats.get(this.view.chat.id);
        if (shown) this.view.chat = this.withCounts(this.view.chat, shown);
        this.renderChatHead();
        if (this.view.messages.atBottom()) this.noteNewestSeen();
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      this.showError(`The chats could not be loaded: ${errorText(err)}`, err instanceof ApiError ? err.code : "");
    } finally {
      this.listsLoading--;
    }
  }

  /** chatName is how a chat is called here: a direct chat by the other member's name. */
  private chatName(c: Chat): string {
    if (!c.direct) return c.name;
    const other = (c.members ?? []).find((m) => m.id !== this.me.id);
    return other?.username ?? (c.name || "Direct message");
  }

  private byListOrder = (a: Chat, b: Chat): number => {
    if (Boolean(a.everyone) !== Boolean(b.everyone)) return a.everyone ? -1 : 1;
    return this.chatName(a).localeCompare(this.chatName(b), undefined, { sensitivity: "base" }) || a.id - b.id;
  };

  private renderList(): void {
    const focused = document.activeElement instanceof HTMLElement && this.list.contains(document.activeElement) ? document.activeElement.dataset["chatId"] : undefined;
    const items = [...this.chats.values()].sort(this.byListOrder).map((c) => {
      // The chat on screen is being read: no count for it.
      const unread = c.id === this.currentId ? 0 : (c.unread ?? 0);
      const a = h(
        "a",
        {
          href: `/chats/${c.id}`,
          "data-testid": "chat-link",
          "data-chat-id": c.id,
          "data-direct": c.direct ? "true" : null,
          "aria-current": c.id === this.currentId ? "page" : null,
          class: unread > 0 ? "unread" : null,
        },
        c.direct ? h("span", { class: "dm-mark", "aria-hidden": "true" }, "@") : null,
        h("span", { class: "name" }, this.chatName(c)),
        c.direct ? h("span", { class: "visually-hidden" }, ", direct message") : null,
        unread > 0 ? h("span", { class: "visually-hidden" }, ", ") : null,
        unread > 0 ? h("span", { class: "badge", "data-testid": "unread-count", "data-count": unread }, unreadLabel(unread)) : null,
        unread > 0 ? h("span", { class: "visually-hidden" }, unread === 1 ? " unread message" : " unread messages") : null,
      );
      a.addEventListener("click", () => this.setSidebar(false));
      return h("li", {}, a);
    });
    replace(this.list, ...items);
    if (items.length === 0) replace(this.list, h("li", { class: "hint" }, "No chats yet."));
    if (focused) this.list.querySelector<HTMLElement>(`a[data-chat-id="${focused}"]`)?.focus();
  }

  /** withCounts is c with the per-user fields of known (a chat event or a single chat carries none). */
  private withCounts(c: Chat, known: Chat | undefined): Chat {
    if (!known) return c;
    const out: Chat = { ...c };
    if (c.last_seq === undefined && known.last_seq !== undefined) out.last_seq = known.last_seq;
    if (c.read_seq === undefined && known.read_seq !== undefined) out.read_seq = known.read_seq;
    if (c.unread === undefined && known.unread !== undefined) out.unread = known.unread;
    return out;
  }

  private upsertChat(c: Chat): void {
    const chat = this.withCounts(c, this.chats.get(c.id));
    this.chats.set(chat.id, chat);
    this.renderList();
    if (this.view.kind === "chat" && this.view.chat.id === chat.id) {
      this.view.chat = chat;
      this.renderChatHead();
    }
  }

  private createChat(): void {
    openCreateChat((chat) => {
      this.upsertChat(chat);
      this.hooks.navigate(`/chats/${chat.id}`);
    });
  }

  private startDirect(): void {
    openDirect((chat) => {
      this.upsertChat(chat);
      this.hooks.navigate(`/chats/${chat.id}`);
    });
  }

  // ---- one chat ----

  /** show loads and shows chat id. */
  async show(id: number): Promise<void> {
    if (this.view.kind === "chat") this.noteSeq(this.view.chat.id, this.view.messages.maxSeq);
    this.leaveView();
    this.currentId = id;
    const token = ++this.loadToken;
    this.renderList();
    this.setSidebar(false);
    this.view = { kind: "loading" };
    this.early = [];
    const hellos = this.hellos;
    const known = this.chats.get(id);
    document.title = `${known ? this.chatName(known) : "Chat"} · communications`;
    replace(this.main, h("p", { class: "loading", role: "status" }, "Loading messages…"));
    try {
      const [{ chat }, { messages }] = await Promise.all([api.chat(id), api.messages(id, { limit: 50 })]);
      if (token !== this.loadToken) return;
      const shown = this.withCounts(chat, this.chats.get(chat.id));
      this.chats.set(chat.id, shown);
      this.renderList();
      const view = this.renderChat(shown);
      this.sendView();
      view.messages.mergePage(messages);
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

  /**
   * leaveView ends what belongs to the chat on screen: presence, typing, the
   * scroll watch. A read position waiting for its moment goes out now: the
   * person saw those messages.
   */
  private leaveView(): void {
    if (this.readTimer !== undefined) {
      window.clearTimeout(this.readTimer);
      this.readTimer = undefined;
      if (this.view.kind === "chat") this.sendRead(this.view);
    }
    if (this.view.kind === "chat") {
      this.view.messages.dispose();
      this.clearGaps(this.view);
    }
    this.online.clear();
    this.onlineTotal = 0;
    this.presenceKnown = false;
    for (const t of this.typists.values()) window.clearTimeout(t.timer);
    this.typists.clear();
    this.lastTypingSent = 0;
    if (this.viewRetry !== undefined) window.clearTimeout(this.viewRetry);
    this.viewRetry = undefined;
  }

  /** sendView tells the server which chat this connection shows (0: none), for presence and typing. */
  private sendView(): void {
    const chatId = this.view.kind === "chat" ? this.view.chat.id : 0;
    if (this.viewRetry !== undefined) window.clearTimeout(this.viewRetry);
    this.viewRetry = undefined;
    if (chatId !== this.viewChat) this.viewRetries = 0;
    this.viewChat = chatId;
    this.viewId = `view-${newId()}`;
    this.sendLive({ type: "view", id: this.viewId, chat_id: chatId });
  }

  /**
   * viewRefused handles a refused view. A chat just created (or joined)
   * reaches this connection's gateway a moment after its HTTP answer: a view
   * sent in between is not_a_member. It is sent again a little later, a few
   * times. A passing refusal (retryable: rate_limited, unavailable) is sent
   * again with a doubling delay for as long as the chat is on screen.
   * Other refusals (a server without presence, say) are left alone.
   */
  private viewRefused(code: string, retryable: boolean): void {
    const view = this.view;
    const chatId = view.kind === "chat" ? view.chat.id : 0;
    if (chatId !== this.viewChat) return;
    let delay: number;
    if (retryable) delay = Math.min(VIEW_RETRY_MAX_MS, VIEW_RETRY_MS * 2 ** Math.min(this.viewRetries, 8)) * (0.5 + Math.random() / 2);
    else if (code === "not_a_member" && chatId !== 0 && this.viewRetries < VIEW_RETRIES) delay = VIEW_RETRY_MS * (this.viewRetries + 1);
    else return;
    this.viewRetries++;
    if (this.viewRetry !== undefined) window.clearTimeout(this.viewRetry);
    this.viewRetry = window.setTimeout(() => {
      this.viewRetry = undefined;
      if (this.view === view) this.sendView();
    }, delay);
  }

  private sendLive(ev: LiveEvent): boolean {
    return this.socket.send(ev);
  }

  private renderFailure(id: number, err: unknown): void {
    this.leaveView();
    if (err instanceof ApiError && err.status === 401) return; // on the way to /login
    if (err instanceof ApiError && err.status === 404) {
      this.view = { kind: "not-found" };
      this.sendView();
      replace(this.main, notFound("Chat not found", `There is no chat with the id ${id}.`));
      this.focusHeading();
      return;
    }
    if (err instanceof ApiError && err.status === 403) {
      this.view = { kind: "not-member" };
      this.sendView();
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
    this.sendView();
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
    const messages = new MessageView(`Messages in ${this.chatName(chat)}`, this.me.id, {
      loadOlder: (before) => void this.loadOlder(before),
      atNewest: () => this.noteNewestSeen(),
      edit: (seq, text) => this.sendChange("edit", chat.id, seq, text),
      remove: (seq) => this.confirmDelete(chat.id, seq),
    });
    const title = h("h1", { "data-testid": "chat-title", tabindex: -1 });
    const description = h("p", { class: "description", "data-testid": "chat-description" });
    const members = h("p", { class: "members-line", "data-testid": "chat-members" });
    const presence = h("p", { class: "members-line presence", "data-testid": "presence" });
    // A polite status: "bob is typing…" is read out once when it appears.
    const typing = h("p", { class: "typing", role: "status", "data-testid": "typing" });
    const edit = h("button", { type: "button", "data-testid": "edit-chat", hidden: true, onclick: () => this.editChat() }, "Edit chat");
    const view: ChatView = { kind: "chat", chat, messages, title, description, members, presence, typing, edit, gaps: new Map() };
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
    input.addEventListener("input", () => {
      if (input.value.trim() !== "") this.noteTyping(chat.id);
    });

    replace(
      this.main,
      h("header", { class: "chat-head" }, h("div", { class: "chat-head-text" }, title, description, members, presence), edit),
      h("div", { class: "messages-wrap" }, messages.el, messages.jump),
      typing,
      form,
    );
    this.renderChatHead();
    for (const entry of this.outbox.values()) if (entry.ev.chat_id === chat.id) this.renderPending(entry);
    return view;
  }

  private renderChatHead(): void {
    if (this.view.kind !== "chat") return;
    const { chat, title, description, members, edit, messages } = this.view;
    const name = this.chatName(chat);
    title.textContent = name;
    description.textContent = chat.description;
    description.hidden = chat.description === "";
    members.textContent = chat.everyone
      ? "Everyone is in this chat"
      : chat.direct
        ? `Direct messages with ${name}`
        : `${chat.members?.length ?? 0} members: ${(chat.members ?? []).map((m) => m.username).join(", ")}`;
    edit.hidden = !this.isCreator(chat);
    messages.setLabel(`Messages in ${name}`);
    document.title = `${name} · communications`;
    this.renderPresence();
  }

  private isCreator(chat: Chat): boolean {
    return !chat.everyone && !chat.direct && chat.creator_id !== undefined && chat.creator_id === this.me.id;
  }

  // ---- presence, typing, read positions ----

  /** renderPresence names the others online in the chat on screen. */
  private renderPresence(): void {
    if (this.view.kind !== "chat") return;
    const el = this.view.presence;
    el.hidden = !this.presenceKnown;
    const others = [...this.online].filter(([id]) => id !== this.me.id).map(([, name]) => name);
    others.sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
    const shown = others.slice(0, PRESENCE_NAMES);
    const names = shown.flatMap((name, i) => [
      i > 0 ? ", " : null,
      h("span", { class: "online-user", "data-testid": "online-user" }, name),
    ]);
    // The person is online (this connection) and counted in the total,
    // named or not.
    const count = Math.max(others.length, this.onlineTotal - 1);
    const more = count - shown.length;
    el.dataset["count"] = String(count);
    if (count === 0) replace(el, h("span", { class: "presence-dot off", "aria-hidden": "true" }), "Nobody else is online");
    else
      replace(
        el,
        h("span", { class: "presence-dot", "aria-hidden": "true" }),
        "Online: ",
        ...names,
        more > 0 ? (shown.length > 0 ? ` and ${more} more` : `${more} ${more === 1 ? "person" : "people"}`) : null,
      );
  }

  /** renderTyping says who types in the chat on screen. */
  private renderTyping(): void {
    if (this.view.kind !== "chat") return;
    const names = [...this.typists.values()].map((t) => t.username);
    const text =
      names.length === 0
        ? ""
        : names.length === 1
          ? `${names[0]} is typing…`
          : names.length === 2
            ? `${names[0]} and ${names[1]} are typing…`
            : "Several people are typing…";
    if (this.view.typing.textContent !== text) this.view.typing.textContent = text;
  }

  private stopTyping(userId: number): void {
    const t = this.typists.get(userId);
    if (!t) return;
    window.clearTimeout(t.timer);
    this.typists.delete(userId);
    this.renderTyping();
  }

  /** noteTyping tells the chat that the person types, at most every TYPING_EVERY_MS. */
  private noteTyping(chatId: number): void {
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_EVERY_MS) return;
    if (this.sendLive({ type: "typing", id: `typing-${newId()}`, chat_id: chatId })) this.lastTypingSent = now;
  }

  /**
   * noteNewestSeen runs when the newest message of the chat on screen is in
   * view: the chat is read up to it. The read position goes out a moment
   * later (so a burst of messages sends one), only forward.
   */
  private noteNewestSeen(): void {
    const view = this.view;
    if (view.kind !== "chat" || !view.messages.isLoaded || document.visibilityState === "hidden") return;
    const chat = this.chats.get(view.chat.id);
    if (!chat) return;
    const seq = view.messages.maxSeq;
    if (seq <= Math.max(chat.read_seq ?? 0, this.readSent.get(chat.id) ?? 0)) return;
    this.readUpTo = seq;
    if (this.readTimer !== undefined) return;
    this.readTimer = window.setTimeout(() => {
      this.readTimer = undefined;
      if (this.view === view) this.sendRead(view);
    }, READ_DEBOUNCE_MS);
  }

  /**
   * sendRead sends the read position of the chat on screen: up to the
   * newest message seen at the bottom. Its unread count goes down only
   * then, so that the count kept here is the server's (a chat left before
   * the read went out, or scrolled up meanwhile, keeps the count of what
   * came since).
   */
  private sendRead(view: ChatView): void {
    const upTo = this.readUpTo;
    const c = this.chats.get(view.chat.id);
    if (!c || upTo <= Math.max(c.read_seq ?? 0, this.readSent.get(c.id) ?? 0)) return;
    const id = `read-${newId()}`;
    if (!this.sendLive({ type: "read", id, chat_id: c.id, seq: upTo })) return;
    this.readSent.set(c.id, upTo);
    // What came after upTo was counted as it came, and is unread still.
    c.unread = Math.min(c.unread ?? 0, view.messages.unreadAfter(upTo));
    // Only refusals are answered by id; the newest few are enough to match them.
    this.readIds.set(id, c.id);
    if (this.readIds.size > 16) this.readIds.delete(this.readIds.keys().next().value ?? "");
  }

  /**
   * readRefused handles a refused read position. It goes out again the next
   * time the newest message is in view (a moment from now when it is, and the
   * refusal was a passing one); a chat no longer on screen gets its count
   * from the server again, since the count here assumed the read.
   */
  private readRefused(id: string, chatId: number, retryable: boolean): void {
    this.readIds.delete(id);
    this.readSent.delete(chatId);
    const view = this.view;
    if (view.kind === "chat" && view.chat.id === chatId) {
      if (retryable && view.messages.atBottom()) this.noteNewestSeen();
    } else void this.loadChats();
  }

  private onReadPosition(ev: ReadPosition): void {
    const chat = this.chats.get(ev.chat_id);
    if (!chat || ev.seq < (chat.read_seq ?? 0)) return;
    chat.read_seq = ev.seq;
    chat.unread = Math.max(0, Math.min(MAX_UNREAD, ev.unread));
    this.renderList();
  }

  // ---- editing and deleting one's messages ----

  /** sendChange sends an edit or deletion of one's message seq; false when not connected. */
  private sendChange(type: "edit" | "delete", chatId: number, seq: number, text?: string): boolean {
    const id = newId();
    const ev: ChangeEvent = { type, id, chat_id: chatId, seq, client_msg_id: id };
    if (type === "edit" && text !== undefined) ev.text = text;
    if (!this.socket.send(ev)) return false;
    this.changes.set(id, { ev, acked: false });
    return true;
  }

  private confirmDelete(chatId: number, seq: number): void {
    if (this.view.kind !== "chat") return;
    const messages = this.view.messages;
    const text = messages.textOf(seq);
    if (text === undefined) return;
    openConfirmDelete(text, () => {
      if (!this.sendChange("delete", chatId, seq)) return false;
      messages.setChangeState(seq, "deleting");
      return true;
    });
  }

  /**
   * changeLost ends an acknowledged edit or deletion whose entry did not
   * come: the message is shown as the history has it now.
   */
  private async changeLost(entry: ChangeEntry): Promise<void> {
    entry.timer = undefined;
    if (this.changes.get(entry.ev.client_msg_id) !== entry) return;
    this.changeFailed(entry);
    const view = this.view;
    if (view.kind !== "chat" || view.chat.id !== entry.ev.chat_id) return;
    try {
      const { messages } = await api.messages(entry.ev.chat_id, { before: entry.ev.seq + 1, limit: 1 });
      if (this.view === view) view.messages.mergePage(messages);
    } catch {
      // The next reconnect reloads the latest page anyway.
    }
  }

  /** changeFailed ends an edit or deletion the server refused (or that got lost). */
  private changeFailed(entry: ChangeEntry): void {
    if (entry.timer !== undefined) window.clearTimeout(entry.timer);
    entry.timer = undefined;
    this.changes.delete(entry.ev.client_msg_id);
    const view = this.view;
    if (view.kind === "chat" && view.chat.id === entry.ev.chat_id) view.messages.setChangeState(entry.ev.seq, "");
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
      messages.mergePage(res.messages);
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
      if (first && view.messages.maxSeq > 0 && first.seq > view.messages.maxSeq + 1) {
        view.messages.clear();
        this.clearGaps(view);
      }
      view.messages.mergePage(messages);
    } catch (err) {
      if (token !== this.loadToken) return;
      if (err instanceof ApiError && (err.status === 403 || err.status === 404)) this.renderFailure(view.chat.id, err);
      else if (!(err instanceof ApiError && err.status === 401)) this.showError(`Messages could not be reloaded: ${errorText(err)}`);
    }
  }

  /**
   * fillGap fetches the messages between after and before that the live
   * stream skipped. A failed read is tried again later (1 s doubling to
   * 30 s) while the chat is on screen, and until it succeeds a reconnect
   * resumes from below the hole.
   */
  private async fillGap(view: ChatView, after: number, before: number): Promise<void> {
    const missing = before - after - 1;
    if (missing > 100) {
      await this.reloadLatest();
      return;
    }
    const gap = view.gaps.get(after) ?? { before, tries: 0 };
    view.gaps.set(after, gap);
    gap.timer = undefined;
    try {
      const { messages } = await api.messages(view.chat.id, { before, limit: missing });
      // A view cleared meanwhile (the latest page replaced it) needs no old messages.
      if (this.view !== view || view.gaps.get(after) !== gap) return;
      view.messages.mergePage(messages);
      view.gaps.delete(after);
    } catch {
      if (this.view !== view || view.gaps.get(after) !== gap) return;
      gap.timer = window.setTimeout(() => void this.fillGap(view, after, before), Math.min(30_000, 1_000 * 2 ** gap.tries++));
    }
  }

  private clearGaps(view: ChatView): void {
    for (const g of view.gaps.values()) window.clearTimeout(g.timer);
    view.gaps.clear();
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

  /** transmit sends one entry of the outbox, or queues it behind a drain on its way. */
  private transmit(entry: OutboxEntry): void {
    this.clearAckTimer(entry);
    entry.error = undefined;
    entry.state = "queued";
    if (this.drainTimer === undefined) this.write(entry, false);
    else this.updatePending(entry);
  }

  /**
   * drain sends the queued entries of the outbox, the oldest first, one per
   * DRAIN_EVERY_MS, until none is left or the connection closes (the next
   * hello starts it again).
   */
  private drain = (): void => {
    this.drainTimer = undefined;
    if (!this.socket.open) return;
    for (const entry of this.outbox.values()) {
      if (entry.state !== "queued") continue;
      this.write(entry, true);
      this.drainTimer = window.setTimeout(this.drain, DRAIN_EVERY_MS);
      return;
    }
  };

  private write(entry: OutboxEntry, drained: boolean): void {
    entry.drained = drained;
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
        status.textContent = this.socket.open ? "Sending…" : "Sending… (waiting for the connection)";
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
        // A new connection views nothing and has sent no read position yet.
        this.readSent.clear();
        this.online.clear();
        this.onlineTotal = 0;
        this.presenceKnown = false;
        this.renderPresence();
        this.sendView();
        // Whatever happened while disconnected: chats, messages, sends
        // not yet acknowledged (resent with the same client_msg_id, which
        // the server never stores twice).
        void this.loadChats();
        // A resumed chat gets what it missed replayed on this connection;
        // any other needs its latest page.
        if (!(this.view.kind === "chat" && this.socket.resuming.has(this.view.chat.id))) void this.reloadLatest();
        // Paced, not all at once: a long outbox would go over the
        // connection's rate limit.
        for (const entry of this.outbox.values()) {
          if (entry.state !== "sent") continue;
          this.clearAckTimer(entry);
          entry.state = "queued";
          this.updatePending(entry);
        }
        if (this.drainTimer === undefined) this.drain();
        for (const entry of this.changes.values()) {
          if (!entry.acked && !this.socket.send(entry.ev)) this.changeFailed(entry);
        }
        break;
      case "ack": {
        const change = this.changes.get(ev.client_msg_id);
        if (change) {
          change.acked = true;
          if (change.timer === undefined) change.timer = window.setTimeout(() => void this.changeLost(change), CHANGE_ENTRY_TIMEOUT_MS);
          break;
        }
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
      case "error":
        this.onError(ev.id, ev.code, ev.message, ev.retryable);
        break;
      case "chat":
        this.onChat(ev.chat);
        break;
      case "chat_removed":
        this.onChatRemoved(ev.chat_id);
        break;
      case "read_position":
        this.onReadPosition(ev);
        break;
      case "presence":
        if (this.view.kind !== "chat" || ev.chat_id !== this.view.chat.id) break;
        this.online.clear();
        for (const u of ev.online ?? []) this.online.set(u.id, u.username);
        // The list names at most 500; total counts everyone online.
        this.onlineTotal = Math.max(this.online.size, ev.total ?? 0);
        this.presenceKnown = true;
        this.viewRetries = 0;
        this.renderPresence();
        break;
      case "presence_changed": {
        if (this.view.kind !== "chat" || ev.chat_id !== this.view.chat.id || !this.presenceKnown) break;
        // A change already known (listed and coming online, say) changes
        // nothing. Someone not listed going offline was one of those
        // counted but not named, if there are any.
        const listed = this.online.has(ev.user_id);
        if (ev.online) {
          if (!listed) this.onlineTotal++;
          this.online.set(ev.user_id, ev.username);
        } else {
          if (listed || this.onlineTotal > this.online.size) this.onlineTotal--;
          this.online.delete(ev.user_id);
          this.stopTyping(ev.user_id);
        }
        this.onlineTotal = Math.max(this.online.size, this.onlineTotal);
        this.renderPresence();
        break;
      }
      case "typing": {
        if (this.view.kind !== "chat" || ev.chat_id !== this.view.chat.id || ev.user_id === this.me.id) break;
        const old = this.typists.get(ev.user_id);
        if (old) window.clearTimeout(old.timer);
        const userId = ev.user_id;
        this.typists.set(userId, { username: ev.username, timer: window.setTimeout(() => this.stopTyping(userId), TYPING_SHOWN_MS) });
        this.renderTyping();
        break;
      }
      case "pong":
        break;
    }
  }

  private onError(id: string | undefined, code: string, message: string, retryable: boolean): void {
    // The events sent in the background (read, typing, view) fail quietly:
    // a server without the feature, or a rate limit, changes nothing the
    // person did.
    if (id !== undefined && LIVE_ID_PREFIXES.some((p) => id.startsWith(p))) {
      if (id === this.viewId) this.viewRefused(code, retryable);
      const readChat = this.readIds.get(id);
      if (readChat !== undefined) this.readRefused(id, readChat, retryable);
      return;
    }
    const text = code === "rate_limited" ? RATE_LIMITED_TEXT : message;
    const change = id !== undefined ? this.changes.get(id) : undefined;
    if (change) {
      this.changeFailed(change);
      this.showError(`${change.ev.type === "edit" ? "The message was not edited" : "The message was not deleted"}: ${text}`, code);
      return;
    }
    const entry = id !== undefined ? this.outbox.get(id) : undefined;
    if (entry?.drained && code === "rate_limited") {
      // Resent too fast after a reconnect: queued again, and the drain waits a moment.
      this.clearAckTimer(entry);
      entry.state = "queued";
      this.updatePending(entry);
      window.clearTimeout(this.drainTimer);
      this.drainTimer = window.setTimeout(this.drain, DRAIN_PAUSE_MS);
      return;
    }
    if (entry) {
      this.clearAckTimer(entry);
      entry.state = "failed";
      entry.error = code === "rate_limited" ? "sending too fast" : message;
      entry.retryable = retryable;
      this.updatePending(entry);
    }
    this.showError(text, code);
  }

  private onMessage(m: Message): void {
    this.noteSeq(m.chat_id, m.seq);
    if (m.sender_id === this.me.id) {
      const entry = this.outbox.get(m.client_msg_id);
      if (entry && entry.ev.chat_id === m.chat_id) {
        this.clearAckTimer(entry);
        this.outbox.delete(m.client_msg_id);
      }
      const change = this.changes.get(m.client_msg_id);
      if (change && change.ev.chat_id === m.chat_id) {
        if (change.timer !== undefined) window.clearTimeout(change.timer);
        this.changes.delete(m.client_msg_id);
      }
    }
    const chat = this.chats.get(m.chat_id);
    const view = this.view;
    const onScreen = m.chat_id === this.currentId && (view.kind === "chat" || view.kind === "loading");
    if (chat) {
      // Messages of others are unread, each once, until a read position
      // covers them (in the chat on screen too: it may be scrolled up, or
      // left before the read went out).
      if (!m.kind && m.sender_id !== this.me.id && m.seq > (chat.last_seq ?? 0) && m.seq > (chat.read_seq ?? 0)) {
        chat.unread = Math.min(MAX_UNREAD, (chat.unread ?? 0) + 1);
        if (this.listsLoading > 0) {
          const counted = this.liveCounted.get(m.chat_id) ?? [];
          if (counted.length < MAX_UNREAD) counted.push(m.seq);
          this.liveCounted.set(m.chat_id, counted);
        }
        if (!onScreen) this.renderList();
      }
      if (m.seq > (chat.last_seq ?? 0)) chat.last_seq = m.seq;
    }
    if (view.kind === "chat" && view.chat.id === m.chat_id) {
      if (!m.kind) this.stopTyping(m.sender_id);
      this.mergeLive(view, m);
      return;
    }
    if (view.kind === "loading" && m.chat_id === this.currentId) {
      this.early.push(m);
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
    this.lastSeq.delete(id);
    this.readSent.delete(id);
    for (const [k, e] of this.outbox) {
      if (e.ev.chat_id !== id) continue;
      this.clearAckTimer(e);
      this.outbox.delete(k);
    }
    for (const e of [...this.changes.values()]) if (e.ev.chat_id === id) this.changeFailed(e);
    this.renderList();
    if (id === this.currentId && this.view.kind === "chat") {
      this.loadToken++;
      this.renderFailure(id, new ApiError(403, "not_a_member", "You were removed from this chat."));
    }
  }
}
