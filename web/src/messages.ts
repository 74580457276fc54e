// The message view of one chat: stored messages ordered by seq, each shown
// once however often it arrives (live, after a reconnect, from history),
// newest at the bottom, following new ones while scrolled to the bottom.

import type { Message } from "./api";
import { h, replace } from "./dom";

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

export class MessageView {
  /** the scrolling region */
  readonly el: HTMLElement;
  private readonly list = h("ol", { class: "message-list", "data-testid": "message-list" });
  private readonly pending = h("ol", { class: "message-list pending-list", "data-testid": "pending-list" });
  private readonly empty = h("p", { class: "empty", "data-testid": "no-messages" }, "No messages yet. Say hello!");
  private readonly older: HTMLButtonElement;
  private readonly olderStatus = h("p", { class: "older-status", role: "status" });
  readonly jump: HTMLButtonElement;
  private readonly bySeq = new Map<number, HTMLLIElement>();
  /** stored seqs shown, ascending */
  private seqs: number[] = [];
  /** whether a page of history has arrived: until then "no messages" would be a guess */
  private loaded = false;

  constructor(
    label: string,
    private readonly myId: number,
    loadOlder: (before: number) => void,
  ) {
    this.older = h(
      "button",
      { type: "button", class: "older", "data-testid": "load-older", hidden: true, onclick: () => loadOlder(this.minSeq) },
      "Load older messages",
    );
    this.el = h(
      "div",
      { class: "messages", role: "log", "aria-label": label, tabindex: 0, "data-testid": "messages", onscroll: () => this.onScroll() },
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
  }

  get maxSeq(): number {
    return this.seqs.length ? (this.seqs[this.seqs.length - 1] ?? 0) : 0;
  }

  get minSeq(): number {
    return this.seqs[0] ?? 0;
  }

  get isLoaded(): boolean {
    return this.loaded;
  }

  has(seq: number): boolean {
    return this.bySeq.has(seq);
  }

  atBottom(): boolean {
    const e = this.el;
    return e.scrollHeight - e.scrollTop - e.clientHeight <= BOTTOM_SLACK_PX;
  }

  scrollToBottom(): void {
    this.el.scrollTop = this.el.scrollHeight;
    this.jump.hidden = true;
  }

  private onScroll(): void {
    if (this.atBottom()) this.jump.hidden = true;
  }

  setLabel(label: string): void {
    this.el.setAttribute("aria-label", label);
  }

  setOlderLoading(loading: boolean, error = ""): void {
    this.older.disabled = loading;
    this.olderStatus.textContent = loading ? "Loading older messages…" : error;
    if (error) this.olderStatus.setAttribute("role", "alert");
    else this.olderStatus.setAttribute("role", "status");
  }

  /** clear forgets every message shown (not the pending ones). */
  clear(): void {
    replace(this.list);
    this.bySeq.clear();
    this.seqs = [];
    this.update();
  }

  /**
   * merge shows the messages not shown yet, each in its place by seq. It
   * keeps the view at the bottom if it was there, and the messages in view
   * where they are when older ones are added above them.
   */
  merge(msgs: readonly Message[]): void {
    const wasAtBottom = this.atBottom();
    const heightBefore = this.el.scrollHeight;
    const topBefore = this.el.scrollTop;
    const oldMax = this.maxSeq;
    let addedBelow = false;
    let addedAbove = false;
    for (const m of msgs) {
      if (this.bySeq.has(m.seq)) continue;
      const li = this.render(m);
      const i = this.insertIndex(m.seq);
      const next = this.seqs[i];
      this.list.insertBefore(li, next === undefined ? null : (this.bySeq.get(next) ?? null));
      this.seqs.splice(i, 0, m.seq);
      this.bySeq.set(m.seq, li);
      if (m.seq > oldMax) addedBelow = true;
      else addedAbove = true;
      if (m.sender_id === this.myId) this.removePending(m.client_msg_id);
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

  private render(m: Message): HTMLLIElement {
    const at = new Date(m.sent_at);
    const valid = !Number.isNaN(at.getTime());
    const mine = m.sender_id === this.myId;
    return h(
      "li",
      { class: mine ? "message mine" : "message", "data-testid": "message", "data-seq": m.seq, "data-state": mine ? "sent" : null },
      h(
        "div",
        { class: "meta" },
        h("span", { class: "sender", "data-testid": "message-sender" }, m.sender),
        " ",
        valid ? h("time", { datetime: at.toISOString(), title: fullFormat.format(at) }, when(at)) : null,
        // One's own stored message has a seq: it is sent.
        mine ? " " : null,
        mine ? h("span", { class: "status", "data-testid": "message-state", "data-state": "sent" }, "Sent") : null,
      ),
      // textContent, never markup: the text is shown exactly as written.
      h("p", { class: "text", "data-testid": "message-text" }, m.text),
    );
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
    this.older.hidden = this.minSeq <= 1;
  }
}
