// The HTTP API of docs/api.md. The session is the HttpOnly cookie that login
// sets: the app never sees or stores the token, and every request stays on
// the page's own origin.

export interface User {
  id: number;
  username: string;
}

export interface Chat {
  id: number;
  name: string;
  description: string;
  creator_id?: number;
  everyone?: boolean;
  /** a direct chat: two members, no name; shown under the other member's name */
  direct?: boolean;
  members?: User[];
  created_at: string;
  /** per user, in the chat list only: the newest seq, the read position, unread messages of others (at most MAX_UNREAD) */
  last_seq?: number;
  read_seq?: number;
  unread?: number;
}

/** the server caps unread counts here; the app shows "99+" from it on */
export const MAX_UNREAD = 100;

/** Message kinds: a message (no kind), or an edit or deletion of message target_seq. */
export type MessageKind = "edit" | "delete";

export interface Message {
  type: "message";
  chat_id: number;
  seq: number;
  sender_id: number;
  sender: string;
  client_msg_id: string;
  text: string;
  sent_at: string;
  /** set on entries that change message target_seq; such entries have a seq but are not shown */
  kind?: MessageKind;
  target_seq?: number;
  /** in history pages: the message was edited (when), or deleted (a tombstone, no text) */
  edited_at?: string;
  deleted?: boolean;
}

export interface ChatChanges {
  name?: string;
  description?: string;
  add_members?: string[];
  remove_members?: string[];
}

/** ApiError is a failed request: the server's code and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

let onUnauthorized: () => void = () => {};

/**
 * setUnauthorizedHandler sets what happens when an authenticated request
 * answers 401: the app goes to the login page.
 */
export function setUnauthorizedHandler(fn: () => void): void {
  onUnauthorized = fn;
}

interface RequestOptions {
  body?: unknown;
  /** a 401 is an answer to show (login), not a lost session */
  own401?: boolean;
  /** the only success is 204: any other answer is an error */
  noContent?: boolean;
}

async function request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  const init: RequestInit = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (opts.body !== undefined) {
    init.headers = { Accept: "application/json", "Content-Type": "application/json" };
    init.body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetch(`/api/v1${path}`, init);
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection and try again.");
  }
  if (res.status === 204) return undefined as T;
  let data: unknown = null;
  if ((res.headers.get("Content-Type") ?? "").includes("application/json")) {
    data = await res.json().catch(() => null);
  }
  if (!res.ok) {
    const err = (data as { error?: { code?: string; message?: string } } | null)?.error;
    const e = new ApiError(res.status, err?.code ?? "http_" + res.status, err?.message ?? `The server answered ${res.status} ${res.statusText}.`);
    if (res.status === 401 && !opts.own401) onUnauthorized();
    throw e;
  }
  if (opts.noContent) throw new ApiError(res.status, "http_" + res.status, `The server answered ${res.status} ${res.statusText}.`);
  return data as T;
}

export const api = {
  register: (username: string, password: string) =>
    request<{ user: User }>("POST", "/auth/register", { body: { username, password }, own401: true }),
  login: (username: string, password: string) =>
    request<{ user: User }>("POST", "/auth/login", { body: { username, password }, own401: true }),
  /** resolves only on 204; a 401 (no session) throws like any other failure */
  logout: () => request<void>("POST", "/auth/logout", { own401: true, noContent: true }),
  me: () => request<{ user: User }>("GET", "/me"),
  chats: () => request<{ chats: Chat[] }>("GET", "/chats"),
  chat: (id: number) => request<{ chat: Chat }>("GET", `/chats/${id}`),
  createChat: (name: string, description: string, members: string[]) =>
    request<{ chat: Chat }>("POST", "/chats", { body: { name, description, members } }),
  updateChat: (id: number, changes: ChatChanges) => request<{ chat: Chat }>("PATCH", `/chats/${id}`, { body: changes }),
  /** starts a direct chat with username, or returns the one that exists */
  direct: (username: string) => request<{ chat: Chat }>("POST", "/direct", { body: { username } }),
  messages: (id: number, opts: { before?: number; after?: number; limit?: number } = {}) => {
    const q = new URLSearchParams({ limit: String(opts.limit ?? 50) });
    if (opts.before !== undefined) q.set("before", String(opts.before));
    if (opts.after !== undefined) q.set("after", String(opts.after));
    return request<{ messages: Message[] }>("GET", `/chats/${id}/messages?${q}`);
  },
};

/** errorText is what the person reads about a failed request. */
export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
