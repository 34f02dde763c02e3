// The chat WebSocket: connects with the token as a subprotocol, matches replies to
// requests by `ref`, reconnects with exponential backoff and jitter after a drop,
// renews the token before it expires (POST /refresh, then `auth` on the open socket),
// and notices a dead connection with an application-level ping.
//
// Nothing here touches the DOM; the WebSocket class, timers, clock and randomness are
// injected so the behaviour can be tested in node with fakes.

import { backoffDelay, describeClose, describeRefusedHandshake, renewalDelay } from './logic.mjs';

/** A refused request (the reply's error), or a local failure: timeout, disconnected. */
export class ChatError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ChatError';
    this.code = code;
  }
}

/** The subprotocol chatd speaks. */
export const SUBPROTOCOL = 'chat.v1';

/** A token this close to expiry is renewed before connecting with it. */
const MIN_TOKEN_LIFE_MS = 5000;

/**
 * How long a connection must stay open before the backoff starts over. A server that
 * welcomes and then closes at once (flooding 1008, slow 1013, a crash loop) is retried
 * ever more slowly instead of twice a second forever.
 */
export const STABLE_MS = 10_000;

/**
 * The backoff exponent used at least while another session holds the connection: with
 * the default base of 0.5 s, a wait of 8-16 s that still grows from there.
 */
const REFUSED_ATTEMPT = 5;

/**
 * Connection states, as shown to the user:
 * connecting (handshake or waiting for the welcome), open (welcomed), waiting (backoff
 * before the next attempt), stopped (not trying: logged out, replaced, session over).
 */
export class ChatSocket {
  /**
   * @param {object} o
   * @param {string} o.url wss:// URL of /ws
   * @param {object} o.session token(), expiresAt() (ms), refresh() and verify(), both
   *   resolving to 'ok', 'retry' (transient failure) or 'ended' (log in again)
   */
  constructor({
    url,
    session,
    WebSocketImpl = globalThis.WebSocket,
    setTimer = (fn, ms) => setTimeout(fn, ms),
    clearTimer = (t) => clearTimeout(t),
    now = () => Date.now(),
    random = Math.random,
    requestTimeoutMs = 10_000,
    backoff = { baseMs: 500, maxMs: 30_000 },
    stableMs = STABLE_MS,
  }) {
    this.url = url;
    this.session = session;
    this.WebSocketImpl = WebSocketImpl;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.now = now;
    this.random = random;
    this.requestTimeoutMs = requestTimeoutMs;
    this.backoff = backoff;
    this.stableMs = stableMs;

    this.listeners = new Map();
    /** Whether the socket should be connected (between start() and a stop). */
    this.running = false;
    /**
     * Whether the token is kept fresh: also while stopped because another tab took
     * over, so this one can take over again later without logging in.
     */
    this.renewing = false;
    this.ws = null;
    /** The token the current connection was opened or last authenticated with. */
    this.wsToken = null;
    this.welcomed = false;
    this.state = 'stopped';
    /** Attempts since the last connection that stayed open STABLE_MS: the backoff exponent. */
    this.attempt = 0;
    this.stableTimer = null;
    this.retryAt = null;
    this.retryTimer = null;
    this.renewTimer = null;
    this.keepaliveTimer = null;
    this.refreshing = null;
    /** The server refused the last `auth`; a second refusal reconnects. */
    this.authRefused = false;
    this.pending = new Map();
    this.nextRef = 0;
    this.lastHeard = 0;
    /** Connections that reached the welcome, for the UI and the tests. */
    this.connects = 0;
    this.lastClose = null;
    /** What ended the last open connection, while reconnecting: failed attempts keep saying it. */
    this.outage = null;
    this.limits = null;
  }

  /** Subscribes to an event: status, welcome, event, close, halted. Returns an unsubscribe. */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }

  emit(type, value) {
    for (const fn of this.listeners.get(type) || []) fn(value);
  }

  /** Starts connecting (and keeps the token fresh) until stopped. */
  start() {
    if (this.running) return;
    this.running = true;
    this.renewing = true;
    this.attempt = 0;
    this.scheduleRenewal();
    this.connect();
  }

  /** Closes the connection for good (log out). */
  stop() {
    this.halt();
    if (this.ws) {
      const ws = this.detach();
      try {
        ws.close(1000, 'bye');
      } catch {
        // Already closing.
      }
    }
    this.setState('stopped');
  }

  /** Drops the current connection without waiting and connects again with the current token. */
  restart() {
    this.halt();
    if (this.ws) {
      const ws = this.detach();
      try {
        ws.close(1000, 'reconnecting');
      } catch {
        // Already closing.
      }
    }
    this.start();
  }

  /** Skips the rest of the backoff wait (the browser is back online, say). */
  reconnectNow() {
    if (!this.running) {
      this.start();
    } else if (this.state === 'waiting') {
      this.clearTimer(this.retryTimer);
      this.retryTimer = null;
      this.connect();
    }
  }

  /** Sends a request; resolves with the reply's data or rejects with a ChatError. */
  request(type, fields = {}, { timeoutMs = this.requestTimeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || !this.welcomed) {
        reject(new ChatError('disconnected', 'not connected'));
        return;
      }
      this.nextRef += 1;
      const ref = this.nextRef;
      const timer = this.setTimer(() => {
        if (this.pending.delete(ref)) reject(new ChatError('timeout', 'no reply in time'));
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
      try {
        this.ws.send(JSON.stringify({ ...fields, type, ref }));
      } catch {
        this.pending.delete(ref);
        this.clearTimer(timer);
        reject(new ChatError('disconnected', 'not connected'));
      }
    });
  }

  get isOpen() {
    return Boolean(this.ws) && this.welcomed;
  }

  // ---- connection lifecycle --------------------------------------------------------

  async connect() {
    this.retryTimer = null;
    if (!this.running || this.ws) return;
    this.setState('connecting');
    if (this.session.expiresAt() - this.now() < MIN_TOKEN_LIFE_MS) {
      const result = await this.refreshOnce();
      if (!this.running || this.ws) return;
      if (result === 'ended') return;
      if (result !== 'ok') {
        this.scheduleReconnect();
        return;
      }
    }
    const token = this.session.token();
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url, [SUBPROTOCOL, `bearer.${token}`]);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.wsToken = token;
    this.welcomed = false;
    ws.onmessage = (ev) => this.onFrame(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {};
  }

  onFrame(ws, data) {
    if (ws !== this.ws) return;
    this.lastHeard = this.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'reply') {
      const p = this.pending.get(msg.ref);
      if (!p) return;
      this.pending.delete(msg.ref);
      this.clearTimer(p.timer);
      if (msg.ok) p.resolve(msg.data || {});
      else p.reject(new ChatError((msg.error && msg.error.code) || 'error', (msg.error && msg.error.message) || ''));
      return;
    }
    if (msg.type === 'welcome') {
      this.welcomed = true;
      this.authRefused = false;
      this.outage = null;
      this.retryAt = null;
      this.clearTimer(this.stableTimer);
      this.stableTimer = this.setTimer(() => {
        this.stableTimer = null;
        this.attempt = 0;
      }, this.stableMs);
      this.connects += 1;
      this.limits = msg.limits || null;
      this.setState('open');
      this.startKeepalive();
      this.emit('welcome', msg);
      // A renewal while the handshake was in flight: hand the fresh token over now.
      if (this.wsToken !== this.session.token()) this.sendAuth();
      return;
    }
    this.emit('event', msg);
  }

  onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    // Read before detach() forgets it: a drop after the welcome is not a failed handshake.
    const wasOpen = this.welcomed;
    this.detach();
    this.closed(code, reason, wasOpen);
  }

  /**
   * The connection is gone (closed by the server, lost, or abandoned by us). `wasOpen`:
   * it had been welcomed (else the handshake failed, and browsers do not say why).
   */
  closed(code, reason, wasOpen) {
    const info = describeClose(code);
    if (wasOpen) this.outage = info.text;
    // A failed attempt says nothing new: keep explaining the outage, either what closed
    // the last open connection (the server restarting, say) or why the server keeps
    // refusing this one, rather than a generic "connection lost".
    let text = info.text;
    let refused = false;
    if (!wasOpen && info.action === 'reconnect') {
      const prev = this.lastClose;
      if (prev && prev.refused) {
        text = prev.text;
        refused = true;
      } else if (this.outage) {
        text = this.outage;
      }
    }
    this.lastClose = { code, reason: reason || '', text, wasOpen, refused, at: this.now() };
    this.emit('close', this.lastClose);
    if (!this.running) return;
    if (info.action === 'reconnect') {
      if (!wasOpen) this.verifySession();
      this.scheduleReconnect();
      return;
    }
    if (info.action === 'login') this.halt();
    else this.pause();
    this.setState('stopped');
    this.emit('halted', { code, text: info.text, action: info.action });
  }

  /** Forgets the current WebSocket (its later events are ignored) and returns it. */
  detach() {
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    this.stopKeepalive();
    this.clearTimer(this.stableTimer);
    this.stableTimer = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = null;
    }
    for (const [, p] of this.pending) {
      this.clearTimer(p.timer);
      p.reject(new ChatError('disconnected', 'the connection closed'));
    }
    this.pending.clear();
    return ws;
  }

  /** Stops every timer and the wish to be connected. */
  halt() {
    this.pause();
    this.renewing = false;
    this.clearTimer(this.renewTimer);
    this.renewTimer = null;
  }

  /** Stops reconnecting; the token is still renewed. */
  pause() {
    this.running = false;
    this.clearTimer(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
  }

  scheduleReconnect() {
    if (!this.running) return;
    const delay = backoffDelay(this.attempt, { ...this.backoff, random: this.random });
    this.attempt += 1;
    this.retryAt = this.now() + delay;
    this.setState('waiting');
    this.clearTimer(this.retryTimer);
    this.retryTimer = this.setTimer(() => this.connect(), delay);
  }

  /**
   * A handshake failed: browsers do not say why. Ask the API whether the token still
   * holds; if it does not (password changed elsewhere, account gone), stop trying. If it
   * does, the server is up and refused the upgrade itself: another session holds the
   * connection. Say so, and wait longer between attempts.
   */
  async verifySession() {
    const result = await this.session.verify();
    if (result === 'ended') {
      if (this.renewing) this.endSession();
      return;
    }
    if (!this.running || this.ws || !this.lastClose || this.lastClose.wasOpen) return;
    if (result === 'ok') {
      this.lastClose = { ...this.lastClose, text: describeRefusedHandshake('ok').text, refused: true };
      // The wait already chosen (the attempt counter is one past it) may be too short.
      if (this.state === 'waiting' && this.attempt <= REFUSED_ATTEMPT) {
        this.attempt = REFUSED_ATTEMPT;
        this.scheduleReconnect();
      } else {
        this.setState(this.state);
      }
    } else if (this.lastClose.refused) {
      // The server is unreachable now: no longer another session's doing.
      this.lastClose = { ...this.lastClose, text: this.outage || describeClose(this.lastClose.code).text, refused: false };
      this.setState(this.state);
    }
  }

  endSession() {
    const text = 'Your session has ended. Please log in again.';
    this.stop();
    this.emit('halted', { code: null, text, action: 'login' });
  }

  setState(state) {
    this.state = state;
    this.emit('status', {
      state,
      attempt: this.attempt,
      retryAt: this.retryAt,
      lastClose: this.lastClose,
      connects: this.connects,
    });
  }

  // ---- keepalive -------------------------------------------------------------------

  /**
   * Sends a ping request when nothing was heard for a while: a connection that does not
   * answer within the request timeout is dead (a laptop woke up, a NAT forgot it) and is
   * replaced without waiting for TCP to notice.
   */
  startKeepalive() {
    this.stopKeepalive();
    const idleMs = Math.max(5, Number((this.limits && this.limits.ws_ping_secs) || 25)) * 1000;
    const tick = () => {
      this.keepaliveTimer = this.setTimer(tick, idleMs / 2);
      if (!this.isOpen || this.now() - this.lastHeard < idleMs) return;
      const ws = this.ws;
      this.request('ping').catch((err) => {
        if (err.code === 'timeout' && this.ws === ws) this.abandon();
      });
    };
    this.keepaliveTimer = this.setTimer(tick, idleMs / 2);
  }

  stopKeepalive() {
    this.clearTimer(this.keepaliveTimer);
    this.keepaliveTimer = null;
  }

  /** Gives up on an unresponsive connection and reconnects. */
  abandon() {
    const wasOpen = this.welcomed;
    const ws = this.detach();
    try {
      ws.close(4000, 'no answer');
    } catch {
      // Nothing to close.
    }
    this.closed(1006, 'no answer to ping', wasOpen);
  }

  // ---- token renewal ---------------------------------------------------------------

  scheduleRenewal() {
    this.clearTimer(this.renewTimer);
    if (!this.renewing) return;
    const lifetime = this.session.expiresAt() - this.now();
    this.renewTimer = this.setTimer(() => this.renew(), renewalDelay(lifetime));
  }

  /** One refresh at a time, shared by whoever needs it. */
  refreshOnce() {
    if (!this.refreshing) {
      this.refreshing = Promise.resolve()
        .then(() => this.session.refresh())
        .catch(() => 'retry')
        .then((result) => {
          this.refreshing = null;
          if (result === 'ended' && this.renewing) this.endSession();
          else if (result === 'ok') this.scheduleRenewal();
          return result;
        });
    }
    return this.refreshing;
  }

  async renew() {
    // Also called outside its timer (a refused auth): never leave a second one running.
    this.clearTimer(this.renewTimer);
    this.renewTimer = null;
    if (!this.renewing) return;
    const result = await this.refreshOnce();
    if (!this.renewing) return;
    if (result === 'ok') {
      this.emit('renewed', { expiresAt: this.session.expiresAt() });
      if (this.isOpen) this.sendAuth();
    } else if (result === 'retry') {
      // The server is unreachable or busy: try again soon, while the token holds.
      const left = this.session.expiresAt() - this.now();
      this.renewTimer = this.setTimer(() => this.renew(), Math.min(15_000, Math.max(1000, left / 4)));
    }
  }

  /**
   * Hands the current token to the open connection (the `auth` request). If the server
   * refuses it (unauthorized, token_expired), the token is renewed and offered once
   * more; refused again, the connection is replaced by one opened with a fresh token,
   * rather than left to be closed (4002) when the old token expires.
   */
  sendAuth() {
    const token = this.session.token();
    const ws = this.ws;
    this.request('auth', { token })
      .then(() => {
        if (this.ws !== ws) return;
        this.wsToken = token;
        this.authRefused = false;
      })
      .catch((err) => {
        // Disconnected or no answer: the next connection uses the new token anyway.
        if (err.code !== 'unauthorized' && err.code !== 'token_expired') return;
        if (this.ws !== ws || !this.renewing) return;
        if (!this.authRefused) {
          this.authRefused = true;
          this.renew();
        } else {
          this.authRefused = false;
          this.reconnectFresh();
        }
      });
  }

  /** Replaces the open connection with a new one, at once, with the current token. */
  reconnectFresh() {
    const ws = this.detach();
    try {
      ws.close(1000, 'new token');
    } catch {
      // Already closing.
    }
    if (!this.running) return;
    this.connect();
  }
}
