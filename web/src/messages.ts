// The message view of one chat: stored messages ordered by seq, each shown
// once however often it arrives (live, after a reconnect, from history),
// newest at the bottom, following new ones while scrolled to the bottom.
// Entries that edit or delete a message have a seq of their own: they change
// the message they point at and are not shown themselves. Older pages load
// when the top comes near (or with the "Load older messages" button).

import type { Message } from "./api";
import { h, replace, uid } from "./dom";

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** when formats a message time: the time today, else date and time. */
function when(d: Date): string {
  const now = new Date();
  const today = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() && d.getDate() === now.getDate();
  return today ? timeFormat.format(d) : dateTimeFormat.format(d);
}

/** Near the bottom counts as at the bottom: a few pixels of slack. */
const BOTTOM_SLACK_PX = 48;
/** Older messages start loading when the top is this close. */
const TOP_MARGIN_PX = 300;

export interface MessageViewHooks {
  /** load the page of history before seq */
  loadOlder(before: number): void;
  /** the newest message is in view (to move the read position) */
  atNewest(): void;
  /** send an edit of one's own message seq; false when it could not be sent */
  edit(seq: number, text: string): boolean;
  /** ask to delete one's own message seq */
  remove(seq: number): void;
}

/** One shown message and the parts of its item that change. */
interface Item {
  msg: Message;
  li: HTMLLIElement;
  text: HTMLParagraphElement;
  edited: HTMLElement;
  actions: HTMLElement | null;
  change: HTMLElement | null;
  editor: HTMLFormElement | null;
  /** the seq of the newest change applied: an older one arriving late is ignored */
  mark: number;
}

export class MessageView {
  /** the scrolling region */
  readonly el: HTMLElement;
  private readonly list = h("ol", { class: "message-list", "data-testid": "message-list" });
  private readonly pending = h("ol", { class: "message-list pending-list", "data-testid": "pending-list" });
  private readonly empty = h("p", { class: "empty", "data-testid": "no-messages" }, "No messages yet. Say hello!");
  private readonly sentinel = h("div", { class: "sentinel", "aria-hidden": "true", "data-testid": "older-sentinel" });
  private readonly older: HTMLButtonElement;
  private readonly olderStatus = h("p", { class: "older-status", role: "status" });
  readonly jump: HTMLButtonElement;
  private readonly items = new Map<number, Item>();
  /** seqs of the shown messages, ascending */
  private seqs: number[] = [];
  /** every seq held, shown messages and changes alike */
  private readonly known = new Set<number>();
  /** the newest change to each message not shown yet, applied when it comes */
  private readonly orphans = new Map<number, Message>();
  private lowest = 0;
  private highest = 0;
  /** whether a page of history has arrived: until then "no messages" would be a guess */
  private loaded = false;
  private loadingOlder = false;
  private readonly observer: IntersectionObserver | null;

  constructor(
    label: string,
    private readonly myId: number,
    private readonly hooks: MessageViewHooks,
  ) {
    this.older = h(
      "button",
      { type: "button", class: "older", "data-testid": "load-older", hidden: true, onclick: () => this.requestOlder() },
      "Load older messages",
    );
    const hintId = uid("log-hint");
    this.el = h(
      "div",
      {
        class: "messages",
        role: "log",
        "aria-label": label,
        "aria-describedby": hintId,
        tabindex: 0,
        "data-testid": "messages",
        onscroll: () => this.onScroll(),
        onkeydown: (e: Event) => this.onKeyDown(e as KeyboardEvent),
        onfocusin: (e: Event) => this.onFocusIn(e as FocusEvent),
        onfocusout: (e: Event) => this.onFocusOut(e as FocusEvent),
      },
      h("p", { id: hintId, class: "visually-hidden" }, "Arrow keys move between messages; Tab then reaches the buttons of one's own message."),
      this.sentinel,
      this.older,
      this.olderStatus,
      this.empty,
      this.list,
      this.pending,
    );
    this.jump = h(
      "button",
      { type: "button", class: "jump", "data-testid": "jump-to-latest", hidden: true, onclick: () => this.scrollToBottom() },
      "New messages below",
    );
    // Scrolling near the top loads the page before: the sentinel sits above
    // the oldest message.
    this.observer =
      typeof IntersectionObserver === "function"
        ? new IntersectionObserver((entries) => {
            if (entries.some((e) => e.isIntersecting)) this.requestOlder();
          }, { root: this.el, rootMargin: `${TOP_MARGIN_PX}px 0px 0px 0px` })
        : null;
    this.observer?.observe(this.sentinel);
  }

  /** dispose stops watching the scroll position (the view is gone). */
  dispose(): void {
    this.observer?.disconnect();
  }

  /** the highest seq held (messages and changes): where a resume starts */
  get maxSeq(): number {
    return this.highest;
  }

  /** the lowest seq held: older pages end before it */
  get minSeq(): number {
    return this.lowest;
  }

  get isLoaded(): boolean {
    return this.loaded;
  }

  has(seq: number): boolean {
    return this.known.has(seq);
  }

  /** unreadAfter counts the messages of others held after seq. */
  unreadAfter(seq: number): number {
    let n = 0;
    for (let i = this.seqs.length - 1; i >= 0 && (this.seqs[i] ?? 0) > seq; i--) if (this.items.get(this.seqs[i] ?? 0)?.msg.sender_id !== this.myId) n++;
    return n;
  }

  atBottom(): boolean {
    const e = this.el;
    return e.scrollHeight - e.scrollTop - e.clientHeight <= BOTTOM_SLACK_PX;
  }

  scrollToBottom(): void {
    this.el.scrollTop = this.el.scrollHeight;
    this.jump.hidden = true;
    this.hooks.atNewest();
  }

  /**
   * Keyboard: the list is one tab stop. Up and Down (Home, End) move the
   * focus between messages; Tab from a message reaches its buttons, which
   * are out of the tab order otherwise, so that a long chat is not a long
   * way to the composer.
   */
  private onKeyDown(e: KeyboardEvent): void {
    if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    if (e.key !== "ArrowUp" && e.key !== "ArrowDown" && e.key !== "Home" && e.key !== "End") return;
    const target = e.target instanceof HTMLElement ? e.target : null;
    if (!target || target.closest("form, button")) return;
    const items = Array.from(this.list.children) as HTMLElement[];
    if (items.length === 0) return;
    const current = target.closest<HTMLElement>("li.message");
    const i = current ? items.indexOf(current) : -1;
    const last = items.length - 1;
    const next =
      e.key === "Home" ? 0 : e.key === "End" ? last : i === -1 ? last : e.key === "ArrowUp" ? Math.max(0, i - 1) : Math.min(last, i + 1);
    e.preventDefault();
    items[next]?.focus();
  }

  /** the message whose buttons are in the tab order now */
  private activeItem: HTMLElement | null = null;

  private onFocusIn(e: FocusEvent): void {
    const li = e.target instanceof HTMLElement ? e.target.closest<HTMLElement>("li.message") : null;
    if (li === this.activeItem) return;
    this.setTabbable(this.activeItem, false);
    this.activeItem = li;
    this.setTabbable(li, true);
  }

  private onFocusOut(e: FocusEvent): void {
    const to = e.relatedTarget instanceof Node ? e.relatedTarget : null;
    if (this.activeItem && (!to || !this.activeItem.contains(to))) {
      this.setTabbable(this.activeItem, false);
      this.activeItem = null;
    }
  }

  private setTabbable(li: HTMLElement | null, on: boolean): void {
    for (const b of li?.querySelectorAll<HTMLElement>(".message-actions button") ?? []) b.tabIndex = on ? 0 : -1;
  }

  private onScroll(): void {
    if (this.atBottom()) {
      this.jump.hidden = true;
      this.hooks.atNewest();
    }
  }

  setLabel(label: string): void {
    this.el.setAttribute("aria-label", label);
  }

  private requestOlder(): void {
    if (!this.loaded || this.loadingOlder || this.lowest <= 1) return;
    this.hooks.loadOlder(this.lowest);
  }

  setOlderLoading(loading: boolean, error = ""): void {
    this.loadingOlder = loading;
    this.older.disabled = loading;
    this.olderStatus.textContent = loading ? "Loading older messages…" : error;
    if (error) this.olderStatus.setAttribute("role", "alert");
    else this.olderStatus.setAttribute("role", "status");
    // Still near the top after a page (a short page, or a fast scroll):
    // observing again reports where the sentinel is now. After an error
    // the button is the way to try again.
    if (!loading && !error) this.recheckTop();
  }

  private recheckTop(): void {
    if (!this.observer) return;
    this.observer.unobserve(this.sentinel);
    this.observer.observe(this.sentinel);
  }

  /** clear forgets every message shown (not the pending ones). */
  clear(): void {
    replace(this.list);
    this.items.clear();
    this.seqs = [];
    this.known.clear();
    this.orphans.clear();
    this.lowest = 0;
    this.highest = 0;
    this.update();
  }

  /**
   * mergePage merges a page of history. A page shows each message as it was
   * when the page was read, its edits and deletions included: a change in
   * the page to a message of the same page is already in that message's
   * copy, and one older than the page (coming later) is not applied either.
   */
  mergePage(msgs: readonly Message[]): void {
    this.merge(msgs, true);
  }

  /**
   * merge shows the messages not shown yet, each in its place by seq, and
   * applies the edits and deletions among them. It keeps the view at the
   * bottom if it was there, and the messages in view where they are when
   * older ones are added above them.
   */
  merge(msgs: readonly Message[], page = false): void {
    const wasAtBottom = this.atBottom();
    const heightBefore = this.el.scrollHeight;
    const topBefore = this.el.scrollTop;
    const firstLoad = !this.loaded;
    const oldMax = this.highest;
    let addedBelow = false;
    let addedAbove = false;
    /** the messages shown from this page */
    const fromPage = new Set<number>();
    for (const m of [...msgs].sort((x, y) => x.seq - y.seq)) {
      if (this.known.has(m.seq)) {
        // A copy of a message shown (a page read again): it may know a
        // deletion, which is final, or a later edit than the one shown.
        const item = this.items.get(m.seq);
        if (item && !m.kind && !item.msg.deleted) {
          if (m.deleted) {
            item.msg = { ...item.msg, deleted: true, text: "" };
            this.paint(item);
          } else if (m.edited_at && Date.parse(m.edited_at) > (item.msg.edited_at ? Date.parse(item.msg.edited_at) : 0)) {
            item.msg = { ...item.msg, text: m.text, edited_at: m.edited_at };
            this.paint(item);
          }
        }
        continue;
      }
      this.known.add(m.seq);
      if (this.lowest === 0 || m.seq < this.lowest) this.lowest = m.seq;
      if (m.seq > this.highest) this.highest = m.seq;
      if (m.seq > oldMax) addedBelow = true;
      else addedAbove = true;
      if (m.sender_id === this.myId) this.removePending(m.client_msg_id);
      if (m.kind === "edit" || m.kind === "delete") {
        const target = m.target_seq !== undefined && fromPage.has(m.target_seq) ? this.items.get(m.target_seq) : undefined;
        if (target) target.mark = Math.max(target.mark, m.seq);
        else this.applyChange(m);
        continue;
      }
      const item = this.render(m);
      const i = this.insertIndex(m.seq);
      const next = this.seqs[i];
      this.list.insertBefore(item.li, next === undefined ? null : (this.items.get(next)?.li ?? null));
      this.seqs.splice(i, 0, m.seq);
      this.items.set(m.seq, item);
      if (page) fromPage.add(m.seq);
      const orphan = this.orphans.get(m.seq);
      if (orphan) {
        this.orphans.delete(m.seq);
        // A copy read after the change knows it already: only a deletion,
        // or an edit no older than the copy's, changes it.
        const at = Date.parse(orphan.edited_at ?? orphan.sent_at);
        if (orphan.kind === "delete" || !m.edited_at || !(at < Date.parse(m.edited_at))) this.applyChange(orphan);
      }
    }
    this.loaded = true;
    this.update();
    if (addedAbove && !addedBelow && !wasAtBottom) {
      this.el.scrollTop = topBefore + (this.el.scrollHeight - heightBefore);
    } else if (wasAtBottom) {
      this.scrollToBottom();
    } else if (addedBelow) {
      this.jump.hidden = false;
    }
    if (firstLoad) this.recheckTop();
  }

  /** applyChange applies an edit or deletion to the message it points at, unless a newer change came first. */
  private applyChange(m: Message): void {
    const target = m.target_seq;
    if (target === undefined) return;
    const item = this.items.get(target);
    if (!item) {
      // Its target is not shown yet (in an older page, or in one on its
      // way): the newest change is kept for when it comes.
      if (m.seq > (this.orphans.get(target)?.seq ?? 0)) this.orphans.set(target, m);
      return;
    }
    if (m.seq <= item.mark) return;
    item.mark = m.seq;
    if (item.msg.deleted) return;
    if (m.kind === "delete") item.msg = { ...item.msg, deleted: true, text: "" };
    else item.msg = { ...item.msg, text: m.text, edited_at: m.edited_at ?? m.sent_at };
    this.setChangeState(item.msg.seq, "");
    this.paint(item);
  }

  private insertIndex(seq: number): number {
    let lo = 0;
    let hi = this.seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.seqs[mid] ?? 0) < seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private render(m: Message): Item {
    const at = new Date(m.sent_at);
    const valid = !Number.isNaN(at.getTime());
    const mine = m.sender_id === this.myId;
    const textId = uid("msg");
    // textContent, never markup: the text is shown exactly as written.
    const text = h("p", { class: "text", id: textId, "data-testid": "message-text" });
    const edited = h("span", { class: "edited", "data-testid": "message-edited", hidden: true }, "(edited)");
    const meta = h(
        "div",
        { class: "meta" },
        h("span", { class: "sender", "data-testid": "message-sender" }, m.sender),
        " ",
        valid ? h("time", { datetime: at.toISOString(), title: fullFormat.format(at) }, when(at)) : null,
        " ",
        edited,
        // One's own stored message has a seq: it is sent.
        mine ? " " : null,
        mine ? h("span", { class: "status", "data-testid": "message-state", "data-state": "sent" }, "Sent") : null,
      );
    const li = h(
      "li",
      { class: mine ? "message mine" : "message", "data-testid": "message", "data-seq": m.seq, "data-state": mine ? "sent" : null, tabindex: -1 },
      meta,
      text,
    );
    const item: Item = { msg: m, li, text, edited, actions: null, change: null, editor: null, mark: 0 };
    if (mine) {
      const describe = { "aria-describedby": textId, tabindex: -1 };
      item.actions = h(
        "span",
        { class: "message-actions" },
        h("button", { type: "button", "data-testid": "edit-message", ...describe, onclick: () => this.openEditor(item) }, "Edit"),
        h("button", { type: "button", "data-testid": "delete-message", ...describe, onclick: () => this.hooks.remove(item.msg.seq) }, "Delete"),
      );
      meta.appendChild(item.actions);
    }
    this.paint(item);
    return item;
  }

  /** paint shows an item's message as it is now: text, "(edited)", or the tombstone. */
  private paint(item: Item): void {
    const m = item.msg;
    if (m.deleted) {
      this.closeEditor(item, false);
      item.li.dataset["deleted"] = "true";
      item.li.classList.add("deleted");
      item.text.textContent = "message deleted";
      item.text.classList.add("tombstone");
      item.edited.hidden = true;
      // Focus on the buttons that go away moves to the list.
      const hadFocus = item.actions?.contains(document.activeElement) ?? false;
      item.actions?.remove();
      item.actions = null;
      if (hadFocus) this.el.focus();
      return;
    }
    item.text.textContent = m.text;
    item.edited.hidden = !m.edited_at;
    if (m.edited_at) {
      item.li.dataset["edited"] = "true";
      const at = new Date(m.edited_at);
      if (!Number.isNaN(at.getTime())) item.edited.title = `Edited ${fullFormat.format(at)}`;
    }
  }

  /** setChangeState shows that an edit or deletion of one's message is on its way ("" when done). */
  setChangeState(seq: number, state: "" | "saving" | "deleting"): void {
    const item = this.items.get(seq);
    if (!item) return;
    item.change?.remove();
    item.change = null;
    if (state === "") {
      delete item.li.dataset["change"];
      return;
    }
    item.li.dataset["change"] = state;
    item.change = h("span", { class: "status", "data-testid": "change-state", "data-state": state }, state === "saving" ? "Saving…" : "Deleting…");
    const meta = item.li.querySelector(".meta");
    meta?.insertBefore(item.change, item.actions && item.actions.parentNode === meta ? item.actions : null);
  }

  /** text returns the text of a shown message, or undefined. */
  textOf(seq: number): string | undefined {
    const m = this.items.get(seq)?.msg;
    return m && !m.deleted ? m.text : undefined;
  }

  private openEditor(item: Item): void {
    if (item.editor || item.msg.deleted) return;
    const id = uid("edit");
    const input = h("textarea", { id, name: "text", rows: 2, "data-testid": "edit-input", "aria-describedby": `${id}-hint` });
    input.value = item.msg.text;
    const error = h("p", { class: "alert", role: "alert", "data-testid": "edit-error", hidden: true });
    const form = h(
      "form",
      { class: "edit-form", "data-testid": "edit-form" },
      h("label", { for: id, class: "visually-hidden" }, "Edit message"),
      input,
      error,
      h(
        "div",
        { class: "edit-actions" },
        h("button", { type: "submit", class: "primary", "data-testid": "edit-save" }, "Save"),
        h("button", { type: "button", "data-testid": "edit-cancel", onclick: () => this.closeEditor(item, true) }, "Cancel"),
      ),
      h("p", { id: `${id}-hint`, class: "visually-hidden" }, "Enter saves, Shift+Enter starts a new line, Escape cancels."),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = input.value;
      if (text.trim() === "") {
        error.textContent = "A message cannot be empty. Delete it instead.";
        error.hidden = false;
        return;
      }
      if (text === item.msg.text) {
        this.closeEditor(item, true);
        return;
      }
      if (!this.hooks.edit(item.msg.seq, text)) {
        error.textContent = "Not connected. Try again once the connection is back.";
        error.hidden = false;
        return;
      }
      this.closeEditor(item, true);
      this.setChangeState(item.msg.seq, "saving");
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        this.closeEditor(item, true);
      } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    item.editor = form;
    item.text.hidden = true;
    if (item.actions) item.actions.hidden = true;
    item.li.appendChild(form);
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  private closeEditor(item: Item, refocus: boolean): void {
    if (!item.editor) return;
    item.editor.remove();
    item.editor = null;
    item.text.hidden = false;
    if (item.actions) item.actions.hidden = false;
    if (refocus) item.actions?.querySelector<HTMLElement>("[data-testid=edit-message]")?.focus();
  }

  /** addPending shows a message on its way; it returns its item. */
  addPending(clientMsgId: string, text: string): HTMLLIElement {
    const wasAtBottom = this.atBottom();
    const status = h("span", { class: "status", "data-testid": "message-state", "data-state": "sending" }, "Sending…");
    const li = h(
      "li",
      { class: "message mine pending", "data-testid": "pending-message", "data-client-msg-id": clientMsgId, "data-state": "sending" },
      h("div", { class: "meta" }, h("span", { class: "sender" }, "You"), " ", status),
      h("p", { class: "text" }, text),
    );
    this.pending.appendChild(li);
    this.update();
    if (wasAtBottom) this.scrollToBottom();
    return li;
  }

  removePending(clientMsgId: string): void {
    for (const li of Array.from(this.pending.children)) {
      if ((li as HTMLElement).dataset["clientMsgId"] === clientMsgId) li.remove();
    }
    this.update();
  }

  private update(): void {
    this.empty.hidden = !this.loaded || this.seqs.length > 0 || this.pending.children.length > 0;
    // Seqs start at 1 and have no gaps: anything above 1 has older ones.
    this.older.hidden = this.lowest <= 1;
  }
}
