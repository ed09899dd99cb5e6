// Type declarations of roomcast.js, the JavaScript client of roomcast
// (client protocol v1, JSON codec). See README.md beside this file.

/** The WebSocket subprotocol of the JSON codec: `roomcast.v1.json`. */
export declare const SUBPROTOCOL: 'roomcast.v1.json';

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/** The connection states, in the order a healthy client goes through them. */
export declare const STATES: readonly ConnectionState[];

/** Any JSON value: what `data` may hold. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The protocol's error codes, and the client's own. */
export type ServerErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_joined'
  | 'rate_limited'
  | 'too_large'
  | 'limit_exceeded'
  | 'unavailable'
  | 'internal';
export type ClientErrorCode =
  | 'disconnected'
  | 'closed'
  | 'timeout'
  | 'unauthorized'
  | 'gave_up'
  | 'encode'
  | 'unexpected_reply';
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** A server `error` frame (its `code`), or a failure of the client itself. */
export declare class RoomcastError extends Error {
  constructor(code: ErrorCode, message?: string, details?: object);
  readonly name: 'RoomcastError';
  readonly code: ErrorCode;
  /** The command's id, for a server error that answered a command. */
  readonly id?: number;
  /** For `unauthorized` and `gave_up`: why the last attempt failed. */
  readonly cause?: DisconnectCause;
  /** For `gave_up`: the consecutive failed attempts. */
  readonly attempts?: number;
}

export interface BackoffOptions {
  /** Upper bound of the first wait, ms (default 250). */
  base?: number;
  /** No wait is ever longer than this, ms (default 15000). */
  cap?: number;
  /** Give up after this many consecutive failed attempts; null (default) retries for ever. */
  maxAttempts?: number | null;
}

/** Exponential backoff with full jitter: the wait before attempt n (0-based)
 * is uniform in [0, min(cap, base * 2^n)]. */
export declare class Backoff {
  constructor(options?: BackoffOptions);
  base: number;
  cap: number;
  maxAttempts: number | null;
  ceiling(attempt: number): number;
  delay(attempt: number, random?: () => number): number;
  exhausted(failures: number): boolean;
}

/** A position in a room's stream. */
export interface Since {
  offset: number;
  epoch: string;
}

/** The last delivered position per room and the duplicate filter it gives. */
export declare class Positions {
  admit(room: string, epoch: string, offset: number): 'deliver' | 'restart' | 'duplicate';
  get(room: string): Since | undefined;
  advanceTo(room: string, to: Since): void;
  replayFrom(room: string, from: Since): void;
  remove(room: string): void;
}

export interface Member {
  user: string;
  session: string;
  /** The token's `info` claim, when it has one. */
  info?: Json;
}

export type Target = { user: string } | { session: string };

/** A fresh idempotency key: 22 random characters of the base64url alphabet. */
export declare function newPublishKey(): string;

/** When to refresh (ms from now) a token expiring `remainingMs` from now:
 * at 80 % of the remaining lifetime, at least `marginMs` (at most half the
 * lifetime) before expiry. */
export declare function refreshDelay(remainingMs: number, marginMs?: number): number;

/** Why `getToken` is asked: a new connection, or a refresh before expiry. */
export interface TokenRequest {
  reason: 'connect' | 'refresh';
}

export interface PublishOptions {
  /** The idempotency key (1 to 64 of `A-Z a-z 0-9 _ . : -`); default: a fresh random one. */
  key?: string;
}

/** The node's answer to a publish. */
export interface PublishAck {
  offset: number;
  /** True when the node had stored this key already (a retry): nothing was stored again. */
  duplicate: boolean;
  /** The key the publish was sent with. */
  key: string;
}

export interface ClientOptions {
  /** One node URL (`ws://host:port/ws`). */
  url?: string;
  /** Several node URLs: each connection attempt goes to the next one. Default:
   * the page's own host (`/ws`) in a browser, `ws://127.0.0.1:8080/ws` elsewhere. */
  urls?: string | string[];
  /** A fixed token (JWT) sent in every `hello`. Without one, anonymous. */
  token?: string | null;
  /** Asked for a token before every connection attempt (takes precedence over
   * `token`), and before the connection's token expires (`reason: 'refresh'`). */
  getToken?: (request: TokenRequest) => string | Promise<string>;
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Reconnection policy. */
  backoff?: Backoff | BackoffOptions;
  /** Socket plus `hello` plus `welcome` must take no longer, ms (default 10000). */
  connectTimeout?: number;
  /** A command's promise rejects with `timeout` after this, ms (default 10000). */
  requestTimeout?: number;
  /** Silence of 2 × ping_interval_ms + this (ms, default 5000) means the connection is dead. */
  heartbeatSlack?: number;
  /** How many times one publish may be sent (first send, resends after a
   * reconnect, retries after `unavailable`); default 5. */
  publishAttempts?: number;
  /** A token is refreshed at least this long before it expires (ms, default
   * 5000; at most half its remaining lifetime). */
  refreshMargin?: number;
}

export interface SessionInfo {
  session: string;
  user: string;
  /** The node that accepted the connection. */
  node: string;
  /** The URL the connection went to. */
  url: string;
  pingIntervalMs: number;
}

/** Why a connection ended or an attempt failed. */
export interface DisconnectCause {
  kind: 'closed' | 'lost' | 'heartbeat' | 'connect_failed' | 'unauthorized' | 'dropped_for_test';
  /** For `closed`: the WebSocket close code (1012 node shutting down, 4401 unauthorized, …). */
  code?: number;
  reason?: string;
  message: string;
}

export type StateEvent =
  | { state: 'connecting'; url: string; attempt: number }
  | {
      state: 'connected';
      /** Whether the previous session was taken over (its rooms and missed messages). */
      resumed: boolean;
      session: SessionInfo;
      url: string;
      /** Rooms the server resumed, and rooms the client joined again with `since`. */
      restored: { resumed: string[]; rejoined: string[] };
    }
  | { state: 'reconnecting'; attempt: number; delay: number; cause: DisconnectCause }
  | { state: 'disconnected'; error: RoomcastError | null };

export interface RoomMessage {
  room: string;
  /** The room's offset of this message, unique within `epoch`. */
  offset: number;
  epoch: string;
  data: Json;
  /** The publisher; absent for messages published over the HTTP API. */
  from?: Member;
  /** True when the message is part of a replay (missed while away, or asked for with `since`). */
  replayed: boolean;
}

export interface DirectMessage {
  data: Json;
  from?: Member;
}

export interface Joined {
  room: string;
  /** The room's latest offset at the join; live messages follow it. */
  offset: number;
  epoch: string;
  /** Only for a join with `since`: whether the messages after it are replayed. */
  recovered?: boolean;
}

export interface EventMap {
  state: StateEvent;
  message: RoomMessage;
  direct: DirectMessage;
  presence_join: { room: string; member: Member };
  presence_leave: { room: string; member: Member };
  /** The node announced a close (drain) and asked for a reconnect after `afterMs`. */
  reconnect: { reason: string; afterMs: number };
  /** After a reconnect the room is back, but the missed messages could not be
   * replayed (new epoch or history trimmed): re-sync it. Live messages continue after `offset`. */
  recovery_failed: { room: string; offset: number; epoch: string };
  /** The node joined the connection to `room` by itself (a server-side
   * subscription: the token's or the connect proxy's `subs`; a `joined`
   * without `id`). The room is now one of `rooms`, resumed after reconnects
   * like any other; live messages follow `offset`. Not emitted for the
   * client's own joins, which resolve `join()`. */
  joined: { room: string; offset: number; epoch: string; server: true };
  /** Joining a room again after a reconnect failed; the client left it. */
  rejoin_failed: { room: string; error: RoomcastError };
  /** An `error` frame that answered no command. */
  server_error: { code: ErrorCode; message: string };
  /** The node took the connection out of `room` (reason `forbidden`: a
   * refreshed token no longer allows it); the client forgot the room. */
  left: { room: string; reason: string | null };
  /** The token was refreshed: it now expires at `expiresAt` (Unix seconds).
   * `server`: the node extended it by itself (its refresh proxy; a
   * `refreshed` without `id`) rather than the client with `getToken`. */
  token_refreshed: { expiresAt: number | null; server: boolean };
  /** A refresh failed (`final`: no more tries; the node will close with 4401
   * at expiry and the client reconnects with a fresh token). */
  token_refresh_failed: { error: RoomcastError | Error; attempt: number; final: boolean };
  /** A frame the client had no use for. */
  unmatched: { type: string; [key: string]: unknown };
}

export declare class RoomcastClient {
  constructor(options?: ClientOptions);

  on<K extends keyof EventMap>(event: K, handler: (payload: EventMap[K]) => void): () => void;
  once<K extends keyof EventMap>(event: K, handler: (payload: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(event: K, handler: (payload: EventMap[K]) => void): void;

  readonly state: ConnectionState;
  readonly stateInfo: StateEvent;
  /** The current session while connected, else null. */
  readonly session: SessionInfo | null;
  /** The rooms this client is in (kept across reconnects), those the node
   * joined it to (server-side subscriptions) included. */
  readonly rooms: string[];
  /** The last delivered position of `room`. */
  position(room: string): Since | undefined;
  /** When the connection's token expires (Unix seconds), while connected and when the node said so
   * (`welcome`, then every `refreshed`, the node's own extensions included). */
  readonly tokenExpiresAt: number | null;

  /** Starts the client; resolves after the first `welcome` (retrying until then). */
  connect(): Promise<SessionInfo>;
  /** Resolves when connected; rejects if the client stops first. */
  waitConnected(): Promise<SessionInfo>;
  /** Closes cleanly and stops for good. */
  close(): Promise<void>;
  /** For tests: cuts the socket and reconnects after `reconnectAfterMs`, resuming. */
  dropConnectionForTest(reconnectAfterMs?: number): boolean;

  join(room: string, options?: { since?: Since; presence?: boolean }): Promise<Joined>;
  /** Leaves `room`. A room the node joined by itself stays left: when the
   * node joins it again after a reconnect, the client leaves it again. */
  leave(room: string): Promise<void>;
  /** Resolves to the message's offset once stored (see `publishAck`). */
  publish(room: string, data: Json, options?: PublishOptions): Promise<number>;
  /** Publishes under an idempotency key; sent again with the same key after a
   * reconnect or an `unavailable` answer, so it is stored once. */
  publishAck(room: string, data: Json, options?: PublishOptions): Promise<PublishAck>;
  /** Asks `getToken` for a token and refreshes the connection's token now;
   * resolves to the new expiry (Unix seconds). */
  refreshToken(): Promise<number | null>;
  send(to: Target, data: Json): Promise<void>;
  sendToUser(user: string, data: Json): Promise<void>;
  sendToSession(session: string, data: Json): Promise<void>;
  presence(room: string): Promise<Member[]>;
  /** Calls `method` on the application's backend; resolves to its answer's `data`. */
  rpc(method: string, data?: Json): Promise<Json>;
  /** Round-trip time in ms. */
  ping(): Promise<number>;
}

/** Creates a client and resolves to it after the first `welcome`. */
export declare function connect(options?: ClientOptions): Promise<RoomcastClient>;
