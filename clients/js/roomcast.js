// roomcast.js: the JavaScript client of roomcast (client protocol v1, JSON codec).
//
// One dependency-free ES module for browsers and Node.js (>= 20; give Node 20
// a WebSocket constructor with the `WebSocket` option, or run it with
// `--experimental-websocket`). It behaves like the Rust client
// (crates/client): a `RoomcastClient` holds one logical session across as many
// WebSocket connections as it takes.
//
// - Reconnect with exponential backoff and full jitter (`Backoff`), rotating
//   through the URLs; a node's `reconnect` notice sets the delay instead; a
//   refused token stops the client rather than retrying for ever.
// - Resume: after a reconnect, `hello` carries the session's resume token and,
//   per room, the last offset delivered; when the server cannot resume, every
//   room is joined again with `since`. A room whose missed messages could not
//   be replayed is reported (`recovery_failed`).
// - De-duplicate by offset per room: no message at or below the last delivered
//   offset of its room and epoch reaches the application twice.
// - Heartbeat: browsers cannot see WebSocket pings, so a connection silent for
//   one ping interval (announced in `welcome`) gets a protocol `ping`, and one
//   silent for two intervals plus some slack is treated as dead and replaced.
//
// - Idempotent publish: every publish carries a key (random, or the
//   caller's); a publish in flight when the connection drops stays pending
//   and is sent again, with the same key, once the session is back, and one
//   answered `unavailable` is retried with backoff, so a retry is never
//   stored twice. Bounded by `requestTimeout` and `publishAttempts`.
// - Token refresh: with a `getToken` callback and a token that expires
//   (`welcome.token_expires_at`), a new token is asked for before expiry and
//   handed to the node with `refresh`; rooms the new token no longer allows
//   are forgotten (`left` with reason `forbidden`). A node that extends the
//   token by itself (its refresh proxy) says so with a `refreshed` without
//   `id`: the known expiry moves and the next refresh is planned from it.
// - Server-side subscriptions: a `joined` without `id` (the token's or the
//   connect proxy's `subs`, right after `welcome`) makes the room one of the
//   client's rooms like any other: positions, de-duplication, resume. A
//   room the application left is not taken back: if the node joins it again
//   after a reconnect, the client leaves it again.
//
// Commands (join, leave, publish, send, presence, ping) return promises
// settled by the reply matched by `id`; an `error` frame rejects with a
// `RoomcastError` whose `code` is the protocol's error code. Commands issued
// while there is no connection reject with code `disconnected`; so do the
// commands other than publish that are in flight when it drops (they are
// never re-sent).

/** The WebSocket subprotocol of the JSON codec. */
export const SUBPROTOCOL = 'roomcast.v1.json';

/** The connection states, in the order a healthy client goes through them. */
export const STATES = Object.freeze(['connecting', 'connected', 'reconnecting', 'disconnected']);

/** A server that refuses a freshly provided token this many times in a row
 * is not going to accept the next one either. */
const MAX_REFUSALS = 2;
/** A session shorter than this does not reset the backoff, so a node that
 * accepts and drops connections at once is not hammered. */
const STABLE_SESSION_MS = 10_000;
/** Used when a server announces a ping interval of 0. */
const FALLBACK_PING_INTERVAL_MS = 25_000;
/** Close code the server uses for a refused (or expired) token. */
const CLOSE_UNAUTHORIZED = 4401;
/** How many times a failed token refresh is tried before the client waits
 * for the node's 4401 close and reconnects with a fresh token instead. */
const REFRESH_ATTEMPTS = 3;
/** Waits between the sends of one publish after `unavailable`. */
const PUBLISH_RETRY = { base: 100, cap: 2000 };
/** A publish key: 1 to 64 of these characters. */
const KEY_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const KEY_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * A fresh idempotency key: 22 characters of the base64url alphabet, 132
 * random bits (from `crypto.getRandomValues` where there is one).
 */
export function newPublishKey() {
  const bytes = new Uint8Array(22);
  if (typeof globalThis.crypto?.getRandomValues === 'function') globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let key = '';
  // 256 is a multiple of 64: the low six bits of a uniform byte are uniform.
  for (const byte of bytes) key += KEY_ALPHABET[byte & 63];
  return key;
}

/**
 * When to ask for the next token, in ms from now, for a token that expires
 * `remainingMs` from now: at 80 % of the remaining lifetime, and at least
 * `marginMs` before expiry (at most half the lifetime early, for short
 * tokens).
 */
export function refreshDelay(remainingMs, marginMs = 5000) {
  if (!(remainingMs > 0)) return 0;
  const margin = Math.min(marginMs, remainingMs / 2);
  return Math.max(0, Math.min(remainingMs * 0.8, remainingMs - margin));
}

const now =
  typeof globalThis.performance?.now === 'function'
    ? () => globalThis.performance.now()
    : () => Date.now();

/**
 * An error from the server (`code` is the protocol's error code, such as
 * `not_joined`) or from the client itself (`disconnected`, `closed`,
 * `timeout`, `unauthorized`, `gave_up`, `encode`, `unexpected_reply`).
 */
export class RoomcastError extends Error {
  constructor(code, message, details = undefined) {
    super(message || code);
    this.name = 'RoomcastError';
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

/**
 * Reconnection policy: exponential growth, a cap, and an optional limit on
 * consecutive failed attempts. The wait before attempt `n` (0-based) is drawn
 * uniformly from `[0, min(cap, base * 2^n)]` ("full jitter"), which spreads a
 * crowd of clients that lost the same node across the whole window.
 */
export class Backoff {
  constructor({ base = 250, cap = 15_000, maxAttempts = null } = {}) {
    this.base = base;
    this.cap = cap;
    this.maxAttempts = maxAttempts;
  }

  /** The largest wait (ms) before attempt `attempt` (0-based). */
  ceiling(attempt) {
    if (this.base <= 0) return 0;
    return Math.min(this.cap, this.base * 2 ** Math.min(attempt, 1024));
  }

  /** A random wait (ms) in `[0, ceiling(attempt)]`. */
  delay(attempt, random = Math.random) {
    return random() * this.ceiling(attempt);
  }

  /** True once `failures` consecutive failed attempts exhaust the policy. */
  exhausted(failures) {
    return this.maxAttempts != null && failures >= Math.max(1, this.maxAttempts);
  }
}

/**
 * The last delivered position (`{offset, epoch}`) per room, and the
 * duplicate filter it gives: a message at or below it in the same epoch was
 * delivered already; a message of another epoch restarts the position (the
 * room's history was lost and its offsets started again).
 */
export class Positions {
  constructor() {
    this._rooms = new Map();
  }

  /** `'deliver'`, `'restart'` (first of an epoch) or `'duplicate'`; moves
   * the position to the message unless it is a duplicate. */
  admit(room, epoch, offset) {
    const pos = this._rooms.get(room);
    if (pos && pos.epoch === epoch) {
      if (offset <= pos.offset) return 'duplicate';
      pos.offset = offset;
      return 'deliver';
    }
    this._rooms.set(room, { offset, epoch });
    return 'restart';
  }

  get(room) {
    const pos = this._rooms.get(room);
    return pos ? { offset: pos.offset, epoch: pos.epoch } : undefined;
  }

  /** Live delivery continues after `to`: replace the position when the epoch
   * differs, never move it back within an epoch. */
  advanceTo(room, to) {
    const pos = this._rooms.get(room);
    if (pos && pos.epoch === to.epoch) pos.offset = Math.max(pos.offset, to.offset);
    else this._rooms.set(room, { offset: to.offset, epoch: to.epoch });
  }

  /** A replay continues from `from`: may move back, except past messages
   * already delivered in the same epoch. */
  replayFrom(room, from) {
    const pos = this._rooms.get(room);
    if (pos && pos.epoch === from.epoch && pos.offset >= from.offset) return;
    this._rooms.set(room, { offset: from.offset, epoch: from.epoch });
  }

  remove(room) {
    this._rooms.delete(room);
  }
}

/** Membership as the client wants it: joined rooms (with their presence flag)
 * and the joins and leaves still waiting for a reply. */
class Rooms {
  constructor() {
    this._rooms = new Map(); // room -> {state: 'joining'|'joined'|'leaving', presence, server}
  }

  /** The node joined the connection to `room` by itself (a `joined`
   * without `id`: a server-side subscription). */
  serverJoined(room) {
    const entry = this._rooms.get(room);
    if (!entry) this._rooms.set(room, { state: 'joined', presence: false, server: true });
    else {
      entry.state = 'joined';
      entry.server = true;
    }
  }

  /** Whether the node put the connection in `room` by itself. */
  isServer(room) {
    return this._rooms.get(room)?.server === true;
  }

  joining(room, presence) {
    if (this._rooms.get(room)?.state === 'joined') return;
    this._rooms.set(room, { state: 'joining', presence });
  }

  /** The presence flag of the first successful join wins, as on the server. */
  joined(room, presence) {
    const entry = this._rooms.get(room);
    if (!entry) this._rooms.set(room, { state: 'joined', presence });
    else {
      if (entry.state !== 'joined') entry.presence = presence;
      entry.state = 'joined';
    }
  }

  joinFailed(room) {
    if (this._rooms.get(room)?.state === 'joining') this._rooms.delete(room);
  }

  leaving(room) {
    const entry = this._rooms.get(room);
    if (entry) entry.state = 'leaving';
  }

  leaveFailed(room) {
    const entry = this._rooms.get(room);
    if (entry?.state === 'leaving') entry.state = 'joined';
  }

  remove(room) {
    this._rooms.delete(room);
  }

  /** The connection dropped: joins and leaves in flight failed. */
  forgetUnsettled() {
    const gone = [];
    for (const [room, entry] of this._rooms) if (entry.state !== 'joined') gone.push(room);
    for (const room of gone) this._rooms.delete(room);
    return gone;
  }

  /** Settled rooms as `[room, presence]`, sorted by name. */
  joinedRooms() {
    return [...this._rooms]
      .filter(([, entry]) => entry.state === 'joined')
      .map(([room, entry]) => [room, entry.presence])
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  }

  /** Only a room being left is muted. */
  delivers(room) {
    return this._rooms.get(room)?.state !== 'leaving';
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (loc && (loc.protocol === 'http:' || loc.protocol === 'https:')) {
    return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
  }
  return 'ws://127.0.0.1:8080/ws';
}

function causeText(cause) {
  switch (cause.kind) {
    case 'closed':
      return `closed by the server with ${cause.code}${cause.reason ? ` (${cause.reason})` : ''}`;
    case 'lost':
      return `connection lost${cause.message ? `: ${cause.message}` : ''}`;
    case 'heartbeat':
      return 'heartbeat lost';
    case 'connect_failed':
      return `connect failed: ${cause.message}`;
    case 'unauthorized':
      return `unauthorized: ${cause.message}`;
    case 'dropped_for_test':
      return 'connection dropped for a test';
    default:
      return cause.kind;
  }
}

function isUnauthorized(cause) {
  return cause.kind === 'unauthorized' || (cause.kind === 'closed' && cause.code === CLOSE_UNAUTHORIZED);
}

function reportHandlerError(error) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
  else
    setTimeout(() => {
      throw error;
    }, 0);
}

/**
 * A connection to roomcast that survives reconnects.
 *
 * ```js
 * const client = new RoomcastClient({ url: 'ws://127.0.0.1:8080/ws' });
 * client.on('message', (m) => console.log(m.room, m.offset, m.data));
 * await client.connect();
 * await client.join('lobby');
 * const offset = await client.publish('lobby', { text: 'hi' });
 * ```
 */
export class RoomcastClient {
  constructor(options = {}) {
    const urls = options.urls ?? options.url ?? defaultUrl();
    this._urls = (Array.isArray(urls) ? urls : [urls]).map(String);
    if (this._urls.length === 0) throw new TypeError('roomcast: at least one URL is needed');
    for (const url of this._urls) {
      if (!/^wss?:\/\//i.test(url)) throw new TypeError(`roomcast: ${url} is not a ws:// or wss:// URL`);
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError(
        'roomcast: no WebSocket constructor; pass one as the WebSocket option (Node 20: run with --experimental-websocket)',
      );
    }
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._backoff = options.backoff instanceof Backoff ? options.backoff : new Backoff(options.backoff ?? {});
    this._connectTimeout = options.connectTimeout ?? 10_000;
    this._requestTimeout = options.requestTimeout ?? 10_000;
    this._heartbeatSlack = options.heartbeatSlack ?? 5_000;
    this._publishAttempts = Math.max(1, options.publishAttempts ?? 5);
    this._publishBackoff = new Backoff(PUBLISH_RETRY);
    this._refreshMargin = options.refreshMargin ?? 5_000;

    this._handlers = new Map();
    this._state = 'disconnected';
    this._stateInfo = { state: 'disconnected', error: null };
    this._started = false;
    this._halted = false;
    this._ready = null;
    this._readyPromise = null;

    this._rooms = new Rooms();
    this._declined = new Set(); // server-subscribed rooms the application left
    this._positions = new Positions();
    this._replayUntil = new Map(); // room -> {offset, epoch}: the end of a replay under way
    this._pending = new Map(); // id -> pending command
    this._publishes = new Set(); // publishes not settled yet, in call order
    this._tokenExpiresAt = null; // Unix seconds, from welcome or refreshed
    this._nextId = 1;
    this._ticket = null; // {session, resumeToken} from the last welcome
    this._session = null;
    this._urlIndex = 0;
    this._streak = { failures: 0, quickDrops: 0, refusals: 0 };
    this._conn = null;
    this._retryTimer = null;
  }

  // ---- events -------------------------------------------------------------

  /** Adds a handler for `event`; returns a function that removes it. */
  on(event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    this._handlers.get(event)?.delete(handler);
  }

  /** Like `on`, for the next occurrence only. */
  once(event, handler) {
    const off = this.on(event, (payload) => {
      off();
      handler(payload);
    });
    return off;
  }

  _emit(event, payload) {
    const handlers = this._handlers.get(event);
    if (!handlers) return;
    for (const handler of [...handlers]) {
      try {
        handler(payload);
      } catch (error) {
        reportHandlerError(error);
      }
    }
  }

  // ---- state --------------------------------------------------------------

  /** `'connecting'`, `'connected'`, `'reconnecting'` or `'disconnected'`. */
  get state() {
    return this._state;
  }

  /** The last `state` event's payload. */
  get stateInfo() {
    return this._stateInfo;
  }

  /** The current session (`{session, user, node, url, pingIntervalMs}`) while connected, else null. */
  get session() {
    return this._state === 'connected' ? this._session : null;
  }

  /** The rooms this client is in (kept across reconnects), the ones the
   * node joined it to (server-side subscriptions) included. */
  get rooms() {
    return this._rooms.joinedRooms().map(([room]) => room);
  }

  /** The last delivered `{offset, epoch}` of `room`, if any. */
  position(room) {
    return this._positions.get(room);
  }

  /** When the current connection's token expires (Unix seconds), when the
   * node said so (`welcome.token_expires_at`, then each `refreshed`). */
  get tokenExpiresAt() {
    return this._state === 'connected' ? this._tokenExpiresAt : null;
  }

  _setState(state, details = {}) {
    this._state = state;
    this._stateInfo = { state, ...details };
    this._emit('state', this._stateInfo);
  }

  /** Resolves when the client is connected (at once if it is); rejects if it stops first. */
  waitConnected() {
    if (this._state === 'connected') return Promise.resolve(this._session);
    if (this._halted) return Promise.reject(new RoomcastError('closed', 'the client is closed'));
    return new Promise((resolve, reject) => {
      const off = this.on('state', (info) => {
        if (info.state === 'connected') {
          off();
          resolve(info.session);
        } else if (info.state === 'disconnected') {
          off();
          reject(info.error ?? new RoomcastError('closed', 'the client is closed'));
        }
      });
    });
  }

  // ---- life cycle ---------------------------------------------------------

  /**
   * Starts the client. Resolves with the session once the first `welcome`
   * arrives (retrying with backoff until then); rejects if the client stops
   * first (closed, token refused, attempts exhausted). Calling it again
   * returns the same promise.
   */
  connect() {
    if (this._readyPromise) return this._readyPromise;
    if (this._halted) return Promise.reject(new RoomcastError('closed', 'the client is closed'));
    this._started = true;
    this._readyPromise = new Promise((resolve, reject) => {
      this._ready = { resolve, reject };
    });
    this._attempt();
    return this._readyPromise;
  }

  /**
   * Closes the connection cleanly and stops the client for good; commands
   * reject with `closed` from then on. Resolves once the socket has closed
   * (or after a second).
   */
  close() {
    if (this._halted) return this._closedPromise ?? Promise.resolve();
    const conn = this._conn;
    this._conn = null;
    let socketClosed = Promise.resolve();
    if (conn) {
      socketClosed = new Promise((resolve) => {
        const timer = setTimeout(resolve, 1000);
        this._retire(conn, 1000, 'client closed', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    this._finish(null);
    this._closedPromise = socketClosed;
    return socketClosed;
  }

  /**
   * For tests: cuts the current socket at once, as a network failure would
   * (no wait for the server), and reconnects after `reconnectAfterMs`
   * instead of the backoff delay, resuming the session.
   */
  dropConnectionForTest(reconnectAfterMs = 0) {
    const conn = this._conn;
    if (!conn || !conn.welcomed) return false;
    conn.retryAfter = reconnectAfterMs;
    this._fail(conn, { kind: 'dropped_for_test' });
    return true;
  }

  _finish(error) {
    if (this._halted) return;
    this._halted = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    for (const pending of this._pending.values()) {
      if (!pending.publish) this._settle(pending, null, new RoomcastError('closed', 'the client is closed'));
    }
    this._pending.clear();
    for (const job of [...this._publishes]) this._endPublish(job, null, new RoomcastError('closed', 'the client is closed'));
    if (this._ready) {
      this._ready.reject(error ?? new RoomcastError('closed', 'the client is closed'));
      this._ready = null;
    }
    this._setState('disconnected', { error });
  }

  async _attempt() {
    this._retryTimer = null;
    if (this._halted) return;
    const url = this._urls[this._urlIndex % this._urls.length];
    this._urlIndex += 1;
    const conn = {
      ws: null,
      url,
      opened: false,
      welcomed: false,
      dead: false,
      retryAfter: null,
      lastSeen: now(),
      probedAt: null,
      startedAt: 0,
      connectTimer: null,
      watchdogTimer: null,
      refreshTimer: null,
      pingIntervalMs: 0,
      serverRooms: new Set(), // rooms the node joined by itself on this connection
    };
    this._conn = conn;
    this._setState('connecting', { url, attempt: this._streak.failures + 1 });
    conn.connectTimer = setTimeout(() => {
      this._fail(conn, { kind: 'connect_failed', message: `no welcome within ${this._connectTimeout} ms` });
    }, this._connectTimeout);

    let token = this._token;
    if (this._getToken) {
      try {
        token = await this._getToken({ reason: 'connect' });
      } catch (error) {
        this._fail(conn, { kind: 'connect_failed', message: `token provider failed: ${error?.message ?? error}` });
        return;
      }
      if (conn.dead || this._halted) return;
    }

    let ws;
    try {
      ws = new this._WebSocket(url, SUBPROTOCOL);
    } catch (error) {
      this._fail(conn, { kind: 'connect_failed', message: String(error?.message ?? error) });
      return;
    }
    conn.ws = ws;
    ws.onopen = () => {
      if (conn.dead) return;
      conn.opened = true;
      const hello = { type: 'hello', id: this._nextId++ };
      if (token != null && token !== '') hello.token = token;
      if (this._ticket) {
        hello.resume = {
          session: this._ticket.session,
          token: this._ticket.resumeToken,
          rooms: this._resumeRooms(),
        };
      }
      this._write(conn, hello);
    };
    ws.onmessage = (event) => this._onRaw(conn, event.data);
    ws.onerror = () => {
      // Browsers follow an error with a close event (which has the code);
      // some implementations (Node 20's) do not when the connection could
      // not be opened at all, so do not wait for it then.
      if (!conn.opened) {
        this._fail(conn, { kind: 'connect_failed', message: `could not connect to ${url}` });
      } else {
        setTimeout(() => this._fail(conn, { kind: 'lost', message: 'socket error' }), 1000);
      }
    };
    ws.onclose = (event) => {
      if (!conn.opened) {
        this._fail(conn, { kind: 'connect_failed', message: `could not connect to ${url} (close ${event.code})` });
      } else if (event.code === 1006) {
        this._fail(conn, { kind: 'lost', message: 'the socket ended without a close frame' });
      } else {
        this._fail(conn, { kind: 'closed', code: event.code, reason: event.reason ?? '' });
      }
    };
  }

  _resumeRooms() {
    const rooms = [];
    for (const [room, presence] of this._rooms.joinedRooms()) {
      const pos = this._positions.get(room);
      if (!pos) continue;
      const entry = { room, offset: pos.offset, epoch: pos.epoch };
      if (presence) entry.presence = true;
      rooms.push(entry);
    }
    return rooms;
  }

  /** Writes a frame on `conn`; false when it could not be encoded or sent. */
  _write(conn, frame) {
    let text;
    try {
      text = JSON.stringify(frame);
    } catch (error) {
      throw new RoomcastError('encode', `cannot encode the frame: ${error?.message ?? error}`);
    }
    try {
      conn.ws.send(text);
      return true;
    } catch (error) {
      this._fail(conn, { kind: 'lost', message: String(error?.message ?? error) });
      return false;
    }
  }

  /** Detaches a socket and closes it; `onClosed` runs when it has. */
  _retire(conn, code, reason, onClosed = null) {
    conn.dead = true;
    clearTimeout(conn.connectTimer);
    clearInterval(conn.watchdogTimer);
    clearTimeout(conn.refreshTimer);
    const ws = conn.ws;
    if (!ws) {
      onClosed?.();
      return;
    }
    ws.onopen = null;
    ws.onmessage = null;
    ws.onerror = () => {};
    ws.onclose = onClosed ? () => onClosed() : null;
    // 0 CONNECTING, 1 OPEN: close; 2 CLOSING, 3 CLOSED: nothing left to do.
    if (ws.readyState === 0 || ws.readyState === 1) {
      try {
        ws.close(code, reason);
      } catch {
        try {
          ws.close();
        } catch {
          /* already gone */
        }
      }
    } else {
      onClosed?.();
    }
  }

  /** A connection (or an attempt) ended: clean up and plan the next attempt. */
  _fail(conn, cause) {
    if (conn.dead) return;
    this._retire(conn, cause.kind === 'dropped_for_test' ? 4000 : 1000, cause.kind);
    if (this._conn === conn) this._conn = null;
    if (this._halted) return;
    cause.message ??= causeText(cause);
    let countsAsAttempt;
    if (conn.welcomed) {
      this._connectionLost();
      const lasted = now() - conn.startedAt;
      this._streak.quickDrops = lasted >= STABLE_SESSION_MS ? 0 : this._streak.quickDrops + 1;
      countsAsAttempt = false;
    } else {
      this._streak.failures += 1;
      countsAsAttempt = true;
    }
    let delay;
    try {
      delay = this._retryDelay(cause, conn.retryAfter, countsAsAttempt);
    } catch (error) {
      this._finish(error);
      return;
    }
    this._setState('reconnecting', { attempt: this._streak.failures + 1, delay, cause });
    this._retryTimer = setTimeout(() => this._attempt(), delay);
  }

  _retryDelay(cause, retryAfter, countsAsAttempt) {
    const streak = this._streak;
    if (isUnauthorized(cause)) {
      streak.refusals += 1;
      // A fixed token that was refused will be refused again; only a
      // callback can bring a better one, and only so many times.
      if (!this._getToken || streak.refusals >= MAX_REFUSALS) {
        throw new RoomcastError('unauthorized', causeText(cause), { cause });
      }
    }
    if (countsAsAttempt && this._backoff.exhausted(streak.failures)) {
      throw new RoomcastError('gave_up', `gave up after ${streak.failures} attempts: ${causeText(cause)}`, {
        attempts: streak.failures,
        cause,
      });
    }
    if (retryAfter != null) return retryAfter;
    return this._backoff.delay(streak.failures + streak.quickDrops);
  }

  /** The connection is gone: what was in flight fails (except publishes,
   * which wait to be sent again), unsettled rooms are forgotten. */
  _connectionLost() {
    for (const pending of this._pending.values()) {
      if (pending.publish) {
        const job = pending.publish;
        if (job.done || job.id !== pending.id) continue;
        job.id = null;
        if (job.attempts >= this._publishAttempts) {
          this._endPublish(
            job,
            null,
            new RoomcastError('disconnected', `the connection dropped before the reply (${job.attempts} attempts)`),
          );
        }
        continue;
      }
      this._settle(pending, null, new RoomcastError('disconnected', 'the connection dropped before the reply'));
    }
    this._pending.clear();
    for (const room of this._rooms.forgetUnsettled()) {
      this._positions.remove(room);
      this._replayUntil.delete(room);
    }
  }

  // ---- incoming -----------------------------------------------------------

  _onRaw(conn, data) {
    if (conn.dead) return;
    conn.lastSeen = now();
    conn.probedAt = null;
    if (typeof data !== 'string') return; // the JSON codec only uses text frames
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
    if (!conn.welcomed) this._onHandshakeFrame(conn, frame);
    else this._onFrame(conn, frame);
  }

  _onHandshakeFrame(conn, frame) {
    switch (frame.type) {
      case 'welcome':
        this._onWelcome(conn, frame);
        break;
      case 'error':
        if (frame.code === 'unauthorized') this._fail(conn, { kind: 'unauthorized', message: frame.message ?? '' });
        else this._fail(conn, { kind: 'connect_failed', message: `hello refused: ${frame.code}: ${frame.message}` });
        break;
      case 'reconnect':
        conn.retryAfter = frame.after_ms ?? null;
        break;
      default:
        break; // nothing else is expected before welcome
    }
  }

  _onWelcome(conn, welcome) {
    conn.welcomed = true;
    conn.startedAt = now();
    clearTimeout(conn.connectTimer);
    this._streak.failures = 0;
    this._streak.refusals = 0;
    this._ticket = { session: welcome.session, resumeToken: welcome.resume_token };
    const pingIntervalMs = welcome.ping_interval_ms > 0 ? welcome.ping_interval_ms : FALLBACK_PING_INTERVAL_MS;
    this._session = {
      session: welcome.session,
      user: welcome.user,
      node: welcome.node,
      url: conn.url,
      pingIntervalMs,
    };
    this._startWatchdog(conn, pingIntervalMs);
    this._tokenExpiresAt = typeof welcome.token_expires_at === 'number' ? welcome.token_expires_at : null;
    const resumed = welcome.resumed === true;
    const restored = this._restoreRooms(conn, resumed, welcome.rooms ?? []);
    if (conn.dead) return;
    // Publishes cut off by the last connection go again, after the joins
    // (the node answers a connection's commands in order).
    for (const job of this._publishes) {
      if (job.id == null && job.retryTimer == null) this._sendPublish(conn, job);
      if (conn.dead) return;
    }
    this._scheduleRefresh(conn, 0);
    this._setState('connected', { resumed, session: this._session, url: conn.url, restored });
    if (this._ready) {
      this._ready.resolve(this._session);
      this._ready = null;
    }
  }

  /** After `welcome`: settle the rooms the server resumed, join the others
   * again with `since` so the server replays what it still can. */
  _restoreRooms(conn, resumed, statuses) {
    const restored = [];
    if (resumed) {
      for (const status of statuses) {
        this._settlePosition(status.room, this._positions.get(status.room), status.epoch, status.offset, status.recovered, true);
        restored.push(status.room);
      }
    }
    const rejoined = [];
    for (const [room, presence] of this._rooms.joinedRooms()) {
      if (restored.includes(room)) continue;
      const frame = { type: 'join', room };
      const since = this._positions.get(room);
      if (since) frame.since = since;
      if (presence) frame.presence = true;
      this._command(conn, frame, { automatic: true });
      rejoined.push(room);
      if (conn.dead) break;
    }
    return { resumed: restored, rejoined };
  }

  _onFrame(conn, frame) {
    switch (frame.type) {
      case 'message': {
        const { room, offset, epoch } = frame;
        if (!this._rooms.delivers(room)) return; // being left
        if (this._positions.admit(room, epoch, offset) === 'duplicate') return;
        const until = this._replayUntil.get(room);
        const replayed = !!until && until.epoch === epoch && offset <= until.offset;
        if (until && !replayed) this._replayUntil.delete(room);
        const message = { room, offset, epoch, data: frame.data, replayed };
        if (frame.from) message.from = frame.from;
        this._emit('message', message);
        return;
      }
      case 'direct': {
        const message = { data: frame.data };
        if (frame.from) message.from = frame.from;
        this._emit('direct', message);
        return;
      }
      case 'presence_join':
      case 'presence_leave':
        if (frame.id == null) {
          this._emit(frame.type, { room: frame.room, member: frame.member });
          return;
        }
        break;
      case 'reconnect':
        conn.retryAfter = frame.after_ms ?? null;
        this._emit('reconnect', { reason: frame.reason, afterMs: frame.after_ms });
        return;
      case 'pong':
        if (frame.id == null) return; // the watchdog's probe
        break;
      case 'joined':
        if (frame.id == null) {
          this._onServerJoined(conn, frame);
          return;
        }
        break;
      case 'refreshed':
        if (frame.id == null) {
          // The node extended the token by itself (its refresh proxy).
          if (typeof frame.expires_at === 'number') this._tokenExpiresAt = frame.expires_at;
          this._emit('token_refreshed', { expiresAt: this._tokenExpiresAt, server: true });
          this._scheduleRefresh(conn, 0);
          return;
        }
        break;
      case 'left':
        if (frame.id == null) {
          // The node took this connection out of the room (a refreshed
          // token no longer allows it): forget it, do not join it again.
          this._forget(frame.room);
          conn.serverRooms.delete(frame.room);
          this._emit('left', { room: frame.room, reason: frame.reason ?? null });
          return;
        }
        break;
      case 'error':
        if (frame.id == null) {
          this._emit('server_error', { code: frame.code, message: frame.message });
          return;
        }
        break;
      default:
        break;
    }
    if (frame.id != null && ['joined', 'left', 'presence', 'pong', 'ack', 'error', 'rpc_result', 'refreshed'].includes(frame.type)) {
      this._onReply(frame.id, frame);
    } else {
      this._emit('unmatched', frame);
    }
  }

  _onReply(id, frame) {
    const pending = this._pending.get(id);
    if (!pending) {
      this._emit('unmatched', frame);
      return;
    }
    this._pending.delete(id);
    clearTimeout(pending.timer);
    if (pending.publish) {
      this._onPublishReply(pending.publish, id, frame);
      return;
    }
    const { asked, automatic } = pending;
    if (asked.kind === 'join') {
      // In a room the node joined by itself on this connection, a join
      // changes nothing (it answers the room's current position, perhaps
      // ahead of messages still on their way, or an error): the position
      // stays where the live messages have taken it.
      const viaServer = pending.conn?.serverRooms.has(asked.room) === true;
      if (frame.type === 'joined') {
        this._rooms.joined(asked.room, asked.presence);
        if (!automatic) this._declined.delete(asked.room);
        if (!viaServer) {
          this._settlePosition(asked.room, asked.since, frame.epoch, frame.offset, frame.recovered, automatic);
        }
      } else if (frame.type === 'error' && !viaServer) {
        if (automatic) {
          this._forget(asked.room);
          this._emit('rejoin_failed', { room: asked.room, error: new RoomcastError(frame.code, frame.message) });
        } else {
          this._rooms.joinFailed(asked.room);
        }
      }
    } else if (asked.kind === 'leave') {
      if (frame.type === 'left' || (frame.type === 'error' && frame.code === 'not_joined')) {
        // A server-side subscription the application left stays left.
        if (this._rooms.isServer(asked.room)) this._declined.add(asked.room);
        pending.conn?.serverRooms.delete(asked.room);
        this._forget(asked.room);
      } else if (frame.type === 'error') this._rooms.leaveFailed(asked.room);
    }
    if (frame.type === 'error') {
      this._settle(pending, null, new RoomcastError(frame.code, frame.message ?? frame.code, { id }));
    } else {
      this._settle(pending, frame, null);
    }
  }

  /**
   * A `joined` without `id`: the node joined this connection to the room by
   * itself (a server-side subscription, announced right after `welcome`).
   * From now on it is one of the client's rooms: resumed after a reconnect,
   * de-duplicated by offset. Such a join replays nothing, so a room the
   * client was in already (a reconnect whose session was not resumed) with
   * messages since its position is reported as `recovery_failed`.
   */
  _onServerJoined(conn, frame) {
    const { room, offset, epoch } = frame;
    if (typeof room !== 'string') return;
    conn.serverRooms.add(room);
    if (this._declined.has(room)) {
      // The application left it: leave it again, muted until then.
      this._rooms.serverJoined(room);
      this._command(conn, { type: 'leave', room }, { automatic: true });
      return;
    }
    const before = this._positions.get(room);
    this._rooms.serverJoined(room);
    this._positions.advanceTo(room, { offset, epoch });
    this._replayUntil.delete(room);
    this._emit('joined', { room, offset, epoch, server: true });
    if (before && (before.epoch !== epoch || before.offset < offset)) {
      this._emit('recovery_failed', { room, offset, epoch });
    }
  }

  _forget(room) {
    this._rooms.remove(room);
    this._positions.remove(room);
    this._replayUntil.delete(room);
  }

  /**
   * Where the room's stream continues after a join or a resumed room. With a
   * successful replay the position stays at the `since` asked for (the
   * replayed messages move it on); otherwise nothing before the room's
   * current offset is coming, so the position jumps there, and when the
   * client itself asked for the replay the application hears that it must
   * re-sync.
   */
  _settlePosition(room, since, epoch, offset, recovered, automatic) {
    if (since && recovered === true) {
      this._positions.replayFrom(room, since);
      if (offset > since.offset) this._replayUntil.set(room, { offset, epoch });
    } else {
      this._positions.advanceTo(room, { offset, epoch });
      this._replayUntil.delete(room);
    }
    if (automatic && recovered === false) {
      this._emit('recovery_failed', { room, offset, epoch });
    }
  }

  // ---- heartbeat ----------------------------------------------------------

  _startWatchdog(conn, intervalMs) {
    conn.pingIntervalMs = intervalMs;
    const deadAfter = 2 * intervalMs + this._heartbeatSlack;
    const every = Math.min(1000, Math.max(20, intervalMs / 4));
    conn.lastSeen = now();
    conn.probedAt = null;
    conn.watchdogTimer = setInterval(() => {
      if (conn.dead) return;
      const t = now();
      const silent = t - conn.lastSeen;
      if (conn.probedAt == null) {
        if (silent >= intervalMs) {
          // Quiet for a full interval: make the server say something.
          conn.probedAt = t;
          this._write(conn, { type: 'ping' });
        }
      } else if (silent >= deadAfter && t - conn.probedAt >= this._heartbeatSlack) {
        // The probe went unanswered. (The second condition only matters when
        // timers were throttled, as in a background tab: the probe then gets
        // its fair chance before the connection is declared dead.)
        this._fail(conn, { kind: 'heartbeat' });
      }
    }, every);
  }

  // ---- commands -----------------------------------------------------------

  /** Sends `frame` with a fresh id on `conn` and records the waiter. */
  _command(conn, frame, { automatic = false, resolve = () => {}, reject = () => {}, map = (f) => f } = {}) {
    const id = this._nextId++;
    frame.id = id;
    let asked = { kind: 'other' };
    if (frame.type === 'join') {
      asked = { kind: 'join', room: frame.room, presence: frame.presence === true, since: frame.since };
    } else if (frame.type === 'leave') {
      asked = { kind: 'leave', room: frame.room };
    }
    const pending = { asked, automatic, conn, resolve, reject, map, settled: false, timer: null };
    let text;
    try {
      text = JSON.stringify(frame);
    } catch (error) {
      reject(new RoomcastError('encode', `cannot encode the frame: ${error?.message ?? error}`));
      return;
    }
    if (asked.kind === 'join') this._rooms.joining(asked.room, asked.presence);
    else if (asked.kind === 'leave') this._rooms.leaving(asked.room);
    this._pending.set(id, pending);
    if (!automatic) {
      pending.timer = setTimeout(() => {
        // The reply may still come and update the rooms; the caller stops waiting.
        this._settle(pending, null, new RoomcastError('timeout', `no reply within ${this._requestTimeout} ms`));
      }, this._requestTimeout);
    }
    try {
      conn.ws.send(text);
    } catch (error) {
      this._fail(conn, { kind: 'lost', message: String(error?.message ?? error) });
    }
  }

  _settle(pending, frame, error) {
    clearTimeout(pending.timer);
    if (pending.settled) return;
    pending.settled = true;
    if (error) {
      pending.reject(error);
      return;
    }
    let value;
    try {
      value = pending.map(frame);
    } catch (mapError) {
      pending.reject(mapError);
      return;
    }
    pending.resolve(value);
  }

  _request(frame, map) {
    return new Promise((resolve, reject) => {
      if (this._halted) {
        reject(new RoomcastError('closed', 'the client is closed'));
        return;
      }
      const conn = this._conn;
      if (!conn || !conn.welcomed || conn.dead) {
        reject(new RoomcastError('disconnected', `not connected (${this._state})`));
        return;
      }
      this._command(conn, frame, { resolve, reject, map });
    });
  }

  /**
   * Joins `room`. Options: `since: {offset, epoch}` replays the messages
   * after that position when history still has them; `presence: true`
   * subscribes to `presence_join`/`presence_leave`. Resolves to
   * `{room, offset, epoch, recovered}` (`recovered` only with `since`). The
   * room is kept across reconnects: resumed, or joined again with the last
   * offset received.
   */
  join(room, { since, presence = false } = {}) {
    const frame = { type: 'join', room };
    if (since) frame.since = { offset: since.offset, epoch: since.epoch };
    if (presence) frame.presence = true;
    return this._request(frame, (reply) => {
      const joined = { room: reply.room, offset: reply.offset, epoch: reply.epoch };
      if (reply.recovered !== undefined) joined.recovered = reply.recovered;
      return joined;
    });
  }

  /** Leaves `room`; its messages stop at once, even before the reply. A
   * room the node joined the connection to by itself (server-side
   * subscription) stays left: if the node joins it again after a
   * reconnect, the client leaves it again without a `joined` event. A later
   * successful `join` of it undoes that (the node allows joining a room of
   * the token's `subs` again). */
  leave(room) {
    return this._request({ type: 'leave', room }, () => undefined);
  }

  /**
   * Publishes `data` to `room`; resolves to the message's offset once stored.
   * See `publishAck` for the key and the retries.
   */
  publish(room, data, options = {}) {
    return this.publishAck(room, data, options).then((ack) => ack.offset);
  }

  /**
   * Publishes `data` to `room` under an idempotency key (`options.key`, or a
   * fresh random one) and resolves to `{offset, duplicate, key}` once stored.
   * When the connection drops before the `ack`, the publish waits for the
   * next connection and is sent again with the same key; an `unavailable`
   * answer is retried with backoff. The node stores one key once per room
   * (within its window), so a retry never duplicates: `duplicate` is true
   * when the node had stored it already. Bounded by `requestTimeout`
   * (rejects with `timeout`) and `publishAttempts` sends.
   */
  publishAck(room, data, { key } = {}) {
    return new Promise((resolve, reject) => {
      if (this._halted) {
        reject(new RoomcastError('closed', 'the client is closed'));
        return;
      }
      if (key === undefined || key === null) key = newPublishKey();
      else if (typeof key !== 'string' || !KEY_PATTERN.test(key)) {
        reject(new RoomcastError('bad_request', 'a publish key is 1 to 64 characters of A-Z a-z 0-9 _ . : -'));
        return;
      }
      const conn = this._conn;
      if (!conn || !conn.welcomed || conn.dead) {
        reject(new RoomcastError('disconnected', `not connected (${this._state})`));
        return;
      }
      try {
        JSON.stringify(data);
      } catch (error) {
        reject(new RoomcastError('encode', `cannot encode the frame: ${error?.message ?? error}`));
        return;
      }
      const job = { room, data, key, attempts: 0, id: null, done: false, retryTimer: null, timer: null, resolve, reject };
      job.timer = setTimeout(() => {
        this._endPublish(job, null, new RoomcastError('timeout', `no ack within ${this._requestTimeout} ms (${job.attempts} attempts)`));
      }, this._requestTimeout);
      this._publishes.add(job);
      this._sendPublish(conn, job);
    });
  }

  /** Sends (again) the publish `job` on `conn`, under a fresh id. */
  _sendPublish(conn, job) {
    job.attempts += 1;
    const id = this._nextId++;
    job.id = id;
    this._pending.set(id, { id, publish: job });
    try {
      conn.ws.send(JSON.stringify({ type: 'publish', id, room: job.room, data: job.data, key: job.key }));
    } catch (error) {
      this._fail(conn, { kind: 'lost', message: String(error?.message ?? error) });
    }
  }

  _onPublishReply(job, id, frame) {
    if (job.done || job.id !== id) return;
    job.id = null;
    if (frame.type === 'ack' && typeof frame.offset === 'number') {
      this._endPublish(job, { offset: frame.offset, duplicate: frame.duplicate === true, key: job.key }, null);
    } else if (frame.type === 'error' && frame.code === 'unavailable' && job.attempts < this._publishAttempts) {
      // Maybe stored, maybe not: the same key again settles it.
      const delay = this._publishBackoff.delay(job.attempts - 1);
      job.retryTimer = setTimeout(() => {
        job.retryTimer = null;
        if (job.done) return;
        const conn = this._conn;
        if (conn && conn.welcomed && !conn.dead) this._sendPublish(conn, job);
        // else: the next welcome sends it.
      }, delay);
    } else if (frame.type === 'error') {
      this._endPublish(job, null, new RoomcastError(frame.code, frame.message ?? frame.code, { id }));
    } else {
      this._endPublish(job, null, new RoomcastError('unexpected_reply', `unexpected reply ${frame.type}`));
    }
  }

  _endPublish(job, value, error) {
    if (job.done) return;
    job.done = true;
    clearTimeout(job.timer);
    clearTimeout(job.retryTimer);
    job.retryTimer = null;
    this._publishes.delete(job);
    // A reply still on its way is matched and dropped (the entry stays in
    // `_pending` until it comes or the connection ends).
    if (error) job.reject(error);
    else job.resolve(value);
  }

  // ---- token refresh ------------------------------------------------------

  /** Plans the next refresh of `conn`'s token (`failures` refreshes in a row
   * failed so far). Needs `getToken` and a token that expires. */
  _scheduleRefresh(conn, failures) {
    clearTimeout(conn.refreshTimer);
    conn.refreshTimer = null;
    if (!this._getToken || this._tokenExpiresAt == null || conn.dead) return;
    const remaining = this._tokenExpiresAt * 1000 - Date.now();
    const delay =
      failures === 0
        ? refreshDelay(remaining, this._refreshMargin)
        : Math.max(100, Math.min(1000 * 2 ** (failures - 1), remaining / 3));
    conn.refreshTimer = setTimeout(() => {
      conn.refreshTimer = null;
      this._refresh(conn).then(
        () => this._scheduleRefresh(conn, 0),
        (error) => {
          if (conn.dead || this._halted) return;
          const attempt = failures + 1;
          const final = attempt >= REFRESH_ATTEMPTS;
          this._emit('token_refresh_failed', { error, attempt, final });
          // After the last failure the node closes with 4401 at expiry and
          // the client reconnects with a fresh token.
          if (!final) this._scheduleRefresh(conn, attempt);
        },
      );
    }, delay);
  }

  /** Asks `getToken` for a token and hands it to the node on `conn`;
   * resolves to the new expiry (Unix seconds). */
  async _refresh(conn) {
    const token = await this._getToken({ reason: 'refresh' });
    if (conn.dead || this._halted) throw new RoomcastError('disconnected', 'the connection ended during the refresh');
    const expiresAt = await new Promise((resolve, reject) => {
      this._command(conn, { type: 'refresh', token }, { resolve, reject, map: (reply) => reply.expires_at ?? null });
    });
    if (conn.dead) throw new RoomcastError('disconnected', 'the connection ended during the refresh');
    this._tokenExpiresAt = typeof expiresAt === 'number' ? expiresAt : null;
    this._emit('token_refreshed', { expiresAt: this._tokenExpiresAt, server: false });
    return this._tokenExpiresAt;
  }

  /**
   * Refreshes the token now (asks `getToken`, sends `refresh`), for example
   * after the user's rights changed; resolves to the new expiry (Unix
   * seconds, or null when the token has none). The automatic refreshes are
   * planned from the new expiry. Rejects with the node's error
   * (`unauthorized`, `forbidden`): the old token then stands.
   */
  async refreshToken() {
    if (!this._getToken) throw new RoomcastError('bad_request', 'refreshToken needs the getToken option');
    if (this._halted) throw new RoomcastError('closed', 'the client is closed');
    const conn = this._conn;
    if (!conn || !conn.welcomed || conn.dead) throw new RoomcastError('disconnected', `not connected (${this._state})`);
    const expiresAt = await this._refresh(conn);
    this._scheduleRefresh(conn, 0);
    return expiresAt;
  }

  /** Sends `data` directly to `{user}` (every connection of that user) or
   * `{session}`. Resolves when the server accepted it for delivery. */
  send(to, data) {
    return this._request({ type: 'send', to, data }, () => undefined);
  }

  sendToUser(user, data) {
    return this.send({ user }, data);
  }

  sendToSession(session, data) {
    return this.send({ session }, data);
  }

  /** The members of `room`: `[{user, session, info?}]`. */
  presence(room) {
    return this._request({ type: 'presence', room }, (reply) => reply.members ?? []);
  }

  /**
   * Calls `method` on the application's backend (the node's RPC proxy);
   * resolves to the backend's `data`, rejects with its error.
   */
  rpc(method, data = null) {
    return this._request({ type: 'rpc', method, data }, (reply) => reply.data ?? null);
  }

  /** A protocol `ping`; resolves to the round-trip time in ms. */
  ping() {
    const started = now();
    return this._request({ type: 'ping' }, () => now() - started);
  }
}

/** Creates a client and connects it: resolves to the client after the first `welcome`. */
export async function connect(options = {}) {
  const client = new RoomcastClient(options);
  await client.connect();
  return client;
}
