// The websocket of docs/protocol.md: one connection at /ws on the page's own
// origin, authenticated by the session cookie. Every frame is split on "\n"
// into events. A dropped connection is reopened after a jittered backoff;
// close codes 4100-4199 mean the session is over (4100) or the client is
// broken (4101), and are not retried.

import type { Chat, Message } from "./api";

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
export type ServerEvent = Hello | Ack | Message | ServerError | ChatEvent | ChatRemoved | Pong;

export interface SendEvent {
  type: "send";
  id: string;
  chat_id: number;
  client_msg_id: string;
  text: string;
}

export type SocketState = "connecting" | "open" | "waiting" | "closed";

export interface SocketHandlers {
  /** an event from the server, hello included */
  event(ev: ServerEvent): void;
  /** the connection's state changed; retryIn is the backoff in ms when waiting */
  state(s: SocketState, retryIn?: number): void;
  /** the session is over (close 4100, or the handshake answered 401) */
  sessionEnded(): void;
  /** the server closed for a reason that retrying does not fix */
  fatal(message: string): void;
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;

/** Socket keeps one websocket open while started. */
export class Socket {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private timer: number | undefined;
  private running = false;
  private greeted = false;
  private onlineListener = () => this.retryNow();

  constructor(
    private readonly handlers: SocketHandlers,
    private readonly checkSession: () => Promise<boolean>,
  ) {}

  get open(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.greeted;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.attempt = 0;
    window.addEventListener("online", this.onlineListener);
    this.connect();
  }

  stop(): void {
    this.running = false;
    window.removeEventListener("online", this.onlineListener);
    window.clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.close(1000, "bye");
    }
    this.handlers.state("closed");
  }

  /** send writes one event; false when the connection is not open. */
  send(ev: SendEvent): boolean {
    if (!this.open || !this.ws) return false;
    this.ws.send(JSON.stringify(ev));
    return true;
  }

  private connect(): void {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws`);
    this.ws = ws;
    this.greeted = false;
    this.handlers.state("connecting");
    ws.onmessage = (m) => {
      if (typeof m.data !== "string") return;
      for (const line of m.data.split("\n")) {
        if (line.trim() === "") continue;
        let ev: ServerEvent;
        try {
          ev = JSON.parse(line) as ServerEvent;
        } catch {
          continue;
        }
        if (ev.type === "hello") {
          this.greeted = true;
          this.attempt = 0;
          this.handlers.state("open");
        }
        this.handlers.event(ev);
      }
    };
    ws.onclose = (c) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const greeted = this.greeted;
      this.greeted = false;
      if (!this.running) return;
      if (c.code === 4100) {
        this.running = false;
        this.handlers.state("closed");
        this.handlers.sessionEnded();
        return;
      }
      if (c.code >= 4101 && c.code <= 4199) {
        this.running = false;
        this.handlers.state("closed");
        this.handlers.fatal(`The server closed the connection (${c.code}${c.reason ? ": " + c.reason : ""}). Reload the page.`);
        return;
      }
      if (!greeted) {
        // The handshake failed: a 401 looks like any network error to a
        // browser, so ask the API whether the session still holds.
        this.checkSession().then(
          (ok) => {
            if (!this.running) return;
            if (ok) this.schedule();
            else {
              this.running = false;
              this.handlers.state("closed");
              this.handlers.sessionEnded();
            }
          },
          () => this.running && this.schedule(),
        );
        return;
      }
      this.schedule();
    };
  }

  private schedule(): void {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    // Equal jitter: half fixed, half random, so that the clients of a
    // gateway that went away do not all come back at once.
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt = Math.min(this.attempt + 1, 10);
    this.handlers.state("waiting", delay);
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.running && this.connect(), delay);
  }

  /** retryNow skips the rest of a backoff (the browser came back online). */
  retryNow(): void {
    if (!this.running || this.ws !== null) return;
    window.clearTimeout(this.timer);
    this.connect();
  }
}
