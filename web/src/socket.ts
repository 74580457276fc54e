// The websocket of docs/protocol.md: one connection at /ws on the page's own
// origin, authenticated by the session cookie. Every frame is split on "\n"
// into events. A dropped connection is reopened after a jittered backoff;
// close codes 4100-4199 mean the session is over (4100) or the client is
// broken (4101), and are not retried.

import type { Chat, Message, User } from "./api";

export interface Hello {
  type: "hello";
  user_id: number;
  username: string;
  chats: number[];
}
export interface Ack {
  type: "ack";
  id?: string;
  chat_id: number;
  client_msg_id: string;
  duplicate?: boolean;
}
export interface ServerError {
  type: "error";
  id?: string;
  code: string;
  message: string;
  retryable: boolean;
}
export interface ChatEvent {
  type: "chat";
  chat: Chat;
}
export interface ChatRemoved {
  type: "chat_removed";
  chat_id: number;
}
export interface Pong {
  type: "pong";
  id?: string;
}
/** the replay of a resuming connection is complete: the sequence reached in each chat the user is still in */
export interface Resumed {
  type: "resumed";
  positions: Record<string, number>;
}
/** the online members of the viewed chat (the answer to view) */
export interface Presence {
  type: "presence";
  chat_id: number;
  /** at most the first 500, by username */
  online: User[];
  /** everyone online, named or not */
  total?: number;
}
/** a member of the viewed chat came online or went offline */
export interface PresenceChanged {
  type: "presence_changed";
  chat_id: number;
  user_id: number;
  username: string;
  online: boolean;
}
/** a member of the viewed chat is typing */
export interface Typing {
  type: "typing";
  chat_id: number;
  user_id: number;
  username: string;
}
/** the user's read position in a chat moved (on any of the user's devices) */
export interface ReadPosition {
  type: "read_position";
  chat_id: number;
  seq: number;
  unread: number;
}
export type ServerEvent =
  | Hello
  | Ack
  | Message
  | ServerError
  | ChatEvent
  | ChatRemoved
  | Pong
  | Resumed
  | Presence
  | PresenceChanged
  | Typing
  | ReadPosition;

export interface SendEvent {
  type: "send";
  id: string;
  chat_id: number;
  client_msg_id: string;
  text: string;
}
/** an edit (new text) or deletion of one's own message seq */
export interface ChangeEvent {
  type: "edit" | "delete";
  id: string;
  chat_id: number;
  seq: number;
  client_msg_id: string;
  text?: string;
}
/** read: read up to seq; typing: typing now; view: the chat shown (0: none) */
export interface LiveEvent {
  type: "read" | "typing" | "view";
  id: string;
  chat_id: number;
  seq?: number;
}
export type ClientEvent = SendEvent | ChangeEvent | LiveEvent;

export type SocketState = "connecting" | "open" | "waiting" | "closed";

export interface SocketHandlers {
  /** an event from the server, hello included */
  event(ev: ServerEvent): void;
  /** the connection's state changed; retryIn is the backoff in ms when waiting */
  state(s: SocketState, retryIn?: number): void;
  /** the session is over (close 4100, or the handshake answered 401) */
  sessionEnded(): void;
  /** something to tell the person about the connection (a close that retrying does not fix, or a rate limit) */
  notice(message: string, code?: string): void;
}

/** the gateway accepts at most this many chats in ?resume= */
const MAX_RESUME_CHATS = 1000;

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;
/** close 4003: the client was rate limited; it comes back after at least this backoff ceiling */
const CLOSE_RATE_LIMITED = 4003;
const RATE_LIMITED_ATTEMPT = 4; // 0.5 s * 2^4 = 8 s

/**
 * Socket keeps one websocket open while started.
 *
 * Every step that runs later (a backoff timer, the answer of checkSession, a
 * websocket's handlers) belongs to one generation. Starting, stopping,
 * connecting and waiting each begin a new generation, so a step of an older
 * one finds itself stale and does nothing. On top of that, a step that would
 * connect first checks that no other websocket is open or connecting, and the
 * handlers of a websocket that is no longer the current one do nothing: there
 * is never more than one live connection.
 */
export class Socket {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private timer: number | undefined;
  private running = false;
  private greeted = false;
  /** bumped by start, stop, connect and every wait: older continuations see they are stale */
  private generation = 0;
  private onlineListener = () => this.retryNow();
  /** whether a connection of this start got its hello: only then does a new one resume */
  private hadHello = false;
  /** the chats the current connection resumes (listed in its ?resume=) */
  private resumingChats: ReadonlySet<number> = new Set();
  /** the last sequence the app holds of each chat (the page sets it) */
  private positions: () => ReadonlyMap<number, number> = () => new Map();

  constructor(
    private readonly handlers: SocketHandlers,
    private readonly checkSession: () => Promise<boolean>,
  ) {}

  get open(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.greeted;
  }

  /** resumeFrom sets where a reconnect finds the last sequence held of each chat. */
  resumeFrom(positions: () => ReadonlyMap<number, number>): void {
    this.positions = positions;
  }

  /** the chats the current connection resumes: their missed messages are replayed after hello */
  get resuming(): ReadonlySet<number> {
    return this.resumingChats;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.attempt = 0;
    this.hadHello = false;
    this.generation++;
    window.addEventListener("online", this.onlineListener);
    this.connect();
  }

  stop(): void {
    this.halt();
    this.dropSocket(1000, "bye");
    this.handlers.state("closed");
  }

  /** send writes one event; false when the connection is not open. */
  send(ev: ClientEvent): boolean {
    if (!this.open || !this.ws) return false;
    this.ws.send(JSON.stringify(ev));
    return true;
  }

  /** retryNow skips the rest of a backoff (the browser came back online). */
  retryNow(): void {
    if (!this.running || this.ws !== null) return;
    this.connect();
  }

  /** halt ends the running state and makes every pending step stale. */
  private halt(): void {
    this.running = false;
    this.generation++;
    window.removeEventListener("online", this.onlineListener);
    this.clearTimer();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) window.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** dropSocket closes the current websocket, if any, without hearing from it again. */
  private dropSocket(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = null;
    this.greeted = false;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onerror = null;
    ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(code, reason);
  }

  /** idle is true while gen is the current generation and no websocket is open or connecting. */
  private idle(gen: number): boolean {
    return this.running && this.generation === gen && this.ws === null;
  }

  private connect(): void {
    if (!this.running || this.ws !== null) return;
    this.clearTimer();
    const gen = ++this.generation;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    // A reconnect lists the last sequence held of each chat: the gateway
    // replays what was missed, then says "resumed".
    const resume = new Map<number, number>();
    if (this.hadHello) {
      for (const [chat, seq] of this.positions()) {
        if (resume.size >= MAX_RESUME_CHATS) break;
        if (Number.isSafeInteger(chat) && chat > 0 && Number.isSafeInteger(seq) && seq >= 0) resume.set(chat, seq);
      }
    }
    this.resumingChats = new Set(resume.keys());
    const query = resume.size > 0 ? `?resume=${[...resume].map(([c, s]) => `${c}:${s}`).join(",")}` : "";
    const ws = new WebSocket(`${proto}//${location.host}/ws${query}`);
    this.ws = ws;
    this.greeted = false;
    // A handler of this websocket acts only while it is the current one.
    const current = () => this.running && this.generation === gen && this.ws === ws;
    this.handlers.state("connecting");
    ws.onmessage = (m) => {
      if (!current() || typeof m.data !== "string") return;
      for (const line of m.data.split("\n")) {
        // A handler may have stopped the socket (or replaced it) meanwhile.
        if (!current()) return;
        if (line.trim() === "") continue;
        let ev: ServerEvent;
        try {
          ev = JSON.parse(line) as ServerEvent;
        } catch {
          continue;
        }
        if (ev.type === "hello") {
          this.greeted = true;
          this.hadHello = true;
          this.attempt = 0;
          this.handlers.state("open");
          if (!current()) return;
        }
        this.handlers.event(ev);
      }
    };
    ws.onclose = (c) => {
      if (!current()) return;
      const greeted = this.greeted;
      this.ws = null;
      this.greeted = false;
      ws.onmessage = null;
      ws.onclose = null;
      if (c.code === 4100) {
        this.halt();
        this.handlers.state("closed");
        this.handlers.sessionEnded();
        return;
      }
      if (c.code >= 4101 && c.code <= 4199) {
        this.halt();
        this.handlers.state("closed");
        this.handlers.notice(`The server closed the connection (${c.code}${c.reason ? ": " + c.reason : ""}). Reload the page.`);
        return;
      }
      if (c.code === CLOSE_RATE_LIMITED) {
        // Rate limited: reconnect and resume like any 40xx, but later.
        this.attempt = Math.max(this.attempt, RATE_LIMITED_ATTEMPT);
        this.handlers.notice("You were sending too fast, so the server disconnected you for a moment. Reconnecting soon.", "rate_limited");
      }
      if (!greeted) {
        // The handshake failed: a 401 looks like any network error to a
        // browser, so ask the API whether the session still holds. Whatever
        // happens before the answer (stop, start, an online event that
        // connects at once) makes the answer stale.
        const check = ++this.generation;
        this.checkSession().then(
          (ok) => {
            if (!this.idle(check)) return;
            if (ok) this.schedule();
            else {
              this.halt();
              this.handlers.state("closed");
              this.handlers.sessionEnded();
            }
          },
          () => {
            if (this.idle(check)) this.schedule();
          },
        );
        return;
      }
      this.schedule();
    };
  }

  private schedule(): void {
    if (!this.running || this.ws !== null) return;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    // Equal jitter: half fixed, half random, so that the clients of a
    // gateway that went away do not all come back at once.
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt = Math.min(this.attempt + 1, 10);
    const gen = ++this.generation;
    this.clearTimer();
    this.handlers.state("waiting", delay);
    this.timer = window.setTimeout(() => {
      if (this.idle(gen)) this.connect();
    }, delay);
  }
}
