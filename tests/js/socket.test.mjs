// Unit tests of the chat socket (public/js/socket.mjs) with a fake WebSocket and a fake
// clock: reconnect with backoff, close codes, token renewal, keepalive, replies by ref.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChatSocket } from '../../public/js/socket.mjs';

/** Timers on a fake clock; `advance` runs what falls due, letting promises settle. */
class Clock {
  constructor() {
    this.t = 1_000_000;
    this.seq = 0;
    this.timers = new Map();
  }

  now = () => this.t;

  set = (fn, ms) => {
    this.seq += 1;
    this.timers.set(this.seq, { at: this.t + Math.max(0, ms), fn });
    return this.seq;
  };

  clear = (id) => {
    this.timers.delete(id);
  };

  async settle() {
    for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
  }

  async advance(ms) {
    const end = this.t + ms;
    await this.settle();
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!next || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
      await this.settle();
    }
    this.t = end;
  }
}

/** Records every socket the client opens; the test plays the server. */
function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(text) {
      const request = JSON.parse(text);
      this.sent.push(request);
      // The server answers pings unless the test plays a dead connection.
      if (request.type === 'ping' && !this.silent) queueMicrotask(() => this.reply(request));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
    }

    // Server side.
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    welcome(limits = { ws_ping_secs: 25 }) {
      this.receive({ type: 'welcome', user: { id: 1, username: 'alice', display_name: 'alice' }, rooms: ['lobby'], limits });
    }

    reply(request, data = {}) {
      this.receive({ type: 'reply', ref: request.ref, ok: true, data });
    }

    drop(code = 1006, reason = '') {
      this.onclose?.({ code, reason });
    }

    lastSent(type) {
      return [...this.sent].reverse().find((r) => r.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

function setup({ lifetimeMs = 3_600_000, refresh = 'ok', verify = 'ok', random = () => 0 } = {}) {
  const clock = new Clock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const calls = { refresh: 0, verify: 0 };
  const session = {
    tokenValue: 'T0',
    expires: clock.t + lifetimeMs,
    token: () => session.tokenValue,
    expiresAt: () => session.expires,
    refresh: async () => {
      calls.refresh += 1;
      const result = typeof refresh === 'function' ? refresh() : refresh;
      if (result === 'ok') {
        session.tokenValue = `T${calls.refresh}`;
        session.expires = clock.t + lifetimeMs;
      }
      return result;
    },
    verify: async () => {
      calls.verify += 1;
      return typeof verify === 'function' ? verify() : verify;
    },
  };
  const socket = new ChatSocket({
    url: 'wss://chat.test/ws',
    session,
    WebSocketImpl: FakeWebSocket,
    setTimer: clock.set,
    clearTimer: clock.clear,
    now: clock.now,
    random,
  });
  const seen = { status: [], events: [], halted: [], welcomes: 0 };
  socket.on('status', (s) => seen.status.push(s));
  socket.on('event', (e) => seen.events.push(e));
  socket.on('halted', (h) => seen.halted.push(h));
  socket.on('welcome', () => {
    seen.welcomes += 1;
  });
  return { clock, sockets, socket, session, calls, seen };
}

test('connects with the token as a subprotocol and matches replies by ref', async () => {
  const { sockets, socket, seen } = setup();
  socket.start();
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].url, 'wss://chat.test/ws');
  assert.deepEqual(sockets[0].protocols, ['chat.v1', 'bearer.T0']);
  assert.equal(socket.state, 'connecting');
  await assert.rejects(socket.request('ping'), { code: 'disconnected' }, 'no requests before the welcome');
  sockets[0].welcome();
  assert.equal(socket.state, 'open');
  assert.equal(seen.welcomes, 1);

  const a = socket.request('join', { room: 'dev' });
  const b = socket.request('rooms');
  const [ja, jb] = sockets[0].sent;
  assert.equal(ja.type, 'join');
  assert.equal(ja.room, 'dev');
  assert.notEqual(ja.ref, jb.ref);
  sockets[0].reply(jb, { rooms: [] });
  sockets[0].receive({ type: 'reply', ref: ja.ref, ok: false, error: { code: 'invalid_room', message: 'bad' } });
  assert.deepEqual(await b, { rooms: [] });
  await assert.rejects(a, { name: 'ChatError', code: 'invalid_room', message: 'bad' });

  sockets[0].receive({ type: 'message', id: 1, room: 'lobby', from: 'bob', text: 'hi', ts: 1 });
  assert.equal(seen.events.length, 1);
  sockets[0].onmessage({ data: 'not json' });
  assert.equal(seen.events.length, 1);
});

test('reconnects with growing backoff and resets it after a welcome', async () => {
  // The server is down: the session check after each failed handshake cannot be made.
  const { clock, sockets, socket, seen } = setup({ random: () => 0, verify: 'retry' });
  socket.start();
  sockets[0].welcome();
  const pending = socket.request('ping');
  sockets[0].drop(1006);
  await assert.rejects(pending, { code: 'disconnected' });
  assert.equal(socket.state, 'waiting');
  assert.equal(socket.retryAt, clock.t + 250);
  assert.equal(seen.status.at(-1).lastClose.code, 1006);

  const delays = [];
  for (let i = 0; i < 4; i += 1) {
    const before = sockets.length;
    const waitFrom = clock.t;
    const delay = socket.retryAt - waitFrom;
    await clock.advance(delay - 1);
    assert.equal(sockets.length, before, 'not before the delay');
    await clock.advance(1);
    assert.equal(sockets.length, before + 1, 'a new attempt after the delay');
    delays.push(delay);
    sockets.at(-1).drop(1006);
  }
  assert.deepEqual(delays, [250, 500, 1000, 2000]);
  await clock.advance(socket.retryAt - clock.t);
  sockets.at(-1).welcome();
  assert.equal(socket.connects, 2);
  // Once the connection has stayed open for a while.
  await clock.advance(10_000);
  assert.equal(socket.attempt, 0);
  sockets.at(-1).drop(1001);
  assert.equal(socket.retryAt - clock.t, 250, 'backoff starts over');
});

test('a server that welcomes and closes at once is retried ever more slowly', async () => {
  for (const code of [1008, 1013]) {
    const { clock, sockets, socket } = setup({ random: () => 0 });
    socket.start();
    const delays = [];
    for (let i = 0; i < 6; i += 1) {
      sockets.at(-1).welcome();
      await clock.advance(100);
      sockets.at(-1).drop(code);
      delays.push(socket.retryAt - clock.t);
      await clock.advance(socket.retryAt - clock.t);
    }
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 8000], `${code}`);
    assert.equal(socket.connects, 6);
  }
  // Open for just under the stable time: still not reset.
  const { clock, sockets, socket } = setup({ random: () => 0 });
  socket.start();
  sockets[0].welcome();
  sockets[0].drop(1008);
  await clock.advance(socket.retryAt - clock.t);
  sockets[1].welcome();
  await clock.advance(9_999);
  sockets[1].drop(1008);
  assert.equal(socket.retryAt - clock.t, 500);
});

test('the server restarting (1001) and flooding (1008) reconnect; 4001 stops; 4002/4003 end the session', async () => {
  for (const code of [1001, 1008, 1009, 1013, 4000]) {
    const { sockets, socket, seen } = setup();
    socket.start();
    sockets[0].welcome();
    sockets[0].drop(code);
    assert.equal(socket.state, 'waiting', `${code}`);
    assert.equal(seen.halted.length, 0);
  }
  for (const [code, action] of [[4001, 'stop'], [4002, 'login'], [4003, 'login']]) {
    const { clock, sockets, socket, seen } = setup();
    socket.start();
    sockets[0].welcome();
    sockets[0].drop(code);
    assert.equal(socket.state, 'stopped');
    assert.equal(seen.halted.length, 1);
    assert.equal(seen.halted[0].action, action);
    await clock.advance(120_000);
    assert.equal(sockets.length, 1, `${code}: no reconnect`);
  }
});

test('a handshake refused for a bad token ends the session', async () => {
  const { clock, sockets, socket, seen, calls } = setup({ verify: 'ended' });
  socket.start();
  sockets[0].drop(1006);
  await clock.settle();
  assert.equal(calls.verify, 1);
  assert.equal(socket.state, 'stopped');
  assert.equal(seen.halted.at(-1).action, 'login');
  await clock.advance(60_000);
  assert.equal(sockets.length, 1);
});

test('a drop after the welcome is not a failed handshake: no session check', async () => {
  const { clock, sockets, socket, calls } = setup();
  socket.start();
  sockets[0].welcome();
  sockets[0].drop(1006);
  await clock.settle();
  assert.equal(socket.lastClose.wasOpen, true);
  assert.equal(calls.verify, 0, 'no GET /me for a connection that was open');
  // The next attempt fails before its welcome: that one is checked.
  await clock.advance(socket.retryAt - clock.t);
  sockets[1].drop(1006);
  await clock.settle();
  assert.equal(socket.lastClose.wasOpen, false);
  assert.equal(calls.verify, 1);
});

test('a handshake failing while the server is down keeps retrying', async () => {
  const { clock, sockets, socket, calls } = setup({ verify: 'retry' });
  socket.start();
  for (let i = 0; i < 4; i += 1) {
    sockets.at(-1).drop(1006);
    await clock.advance(socket.retryAt - clock.t);
  }
  assert.ok(sockets.length >= 3, `${sockets.length}`);
  assert.ok(calls.verify >= 2);
  assert.notEqual(socket.state, 'stopped');
});

test('failed attempts keep explaining the outage: the server restarting (1001)', async () => {
  const { clock, sockets, socket, seen } = setup({ verify: 'retry' });
  socket.start();
  sockets[0].welcome();
  sockets[0].drop(1001, 'going away');
  assert.equal(socket.lastClose.text, 'The server is restarting.');
  for (let i = 1; i <= 3; i += 1) {
    await clock.advance(socket.retryAt - clock.t);
    sockets[i].drop(1006);
    await clock.settle();
    assert.equal(socket.lastClose.code, 1006);
    assert.equal(seen.status.at(-1).lastClose.text, 'The server is restarting.', `attempt ${i}`);
  }
  await clock.advance(socket.retryAt - clock.t);
  sockets[4].welcome();
  // A later drop is explained afresh.
  sockets[4].drop(1006);
  assert.equal(socket.lastClose.text, 'The connection to the server was lost.');
});

test('a handshake refused while the token holds: another session has the connection, so wait longer', async () => {
  let verdict = 'ok';
  const { clock, sockets, socket, calls, seen } = setup({ verify: () => verdict, random: () => 0 });
  socket.start();
  sockets[0].drop(1006);
  await clock.settle();
  assert.equal(calls.verify, 1);
  assert.equal(socket.state, 'waiting');
  assert.equal(socket.lastClose.refused, true);
  assert.match(seen.status.at(-1).lastClose.text, /open in another tab, window or device/);
  assert.equal(socket.retryAt - clock.t, 8000, 'not the 0.25 s of a first retry');
  assert.equal(seen.halted.length, 0, 'keeps trying: the other session may close');
  const delays = [];
  for (let i = 1; i <= 3; i += 1) {
    await clock.advance(socket.retryAt - clock.t);
    sockets[i].drop(1006);
    await clock.settle();
    assert.equal(socket.lastClose.refused, true);
    delays.push(socket.retryAt - clock.t);
  }
  assert.deepEqual(delays, [15_000, 15_000, 15_000], 'longer again, up to the cap (30 s, half of it fixed)');
  // Now the server is down: that is not another session any more.
  verdict = 'retry';
  await clock.advance(socket.retryAt - clock.t);
  sockets[4].drop(1006);
  await clock.settle();
  assert.equal(socket.lastClose.refused, false);
  assert.equal(seen.status.at(-1).lastClose.text, 'The connection to the server was lost.');
  // The other session closed: this one gets in.
  await clock.advance(socket.retryAt - clock.t);
  sockets[5].welcome();
  assert.equal(socket.state, 'open');
});

test('renews the token before expiry and hands it to the open socket', async () => {
  const { clock, sockets, socket, calls, seen } = setup({ lifetimeMs: 60_000 });
  socket.start();
  sockets[0].welcome();
  await clock.advance(44_000 - 1);
  assert.equal(calls.refresh, 0);
  await clock.advance(1);
  assert.equal(calls.refresh, 1);
  const auth = sockets[0].lastSent('auth');
  assert.deepEqual([auth.type, auth.token], ['auth', 'T1']);
  sockets[0].reply(auth, { expires_at: clock.t + 60_000 });
  // And again, a lifetime later: a long session never runs out.
  await clock.advance(44_000);
  assert.equal(calls.refresh, 2);
  assert.equal(sockets[0].lastSent('auth').token, 'T2');
  assert.equal(sockets.length, 1, 'the same connection throughout');
  assert.equal(seen.halted.length, 0);
});

test('a renewal that fails for a moment is retried before expiry; a refused one ends the session', async () => {
  let answer = 'retry';
  const { clock, sockets, socket, calls, seen } = setup({ lifetimeMs: 60_000, refresh: () => answer });
  socket.start();
  sockets[0].welcome();
  await clock.advance(44_000);
  assert.equal(calls.refresh, 1);
  answer = 'ok';
  await clock.advance(5_000);
  assert.equal(calls.refresh, 2);
  assert.equal(sockets[0].lastSent('auth').token, 'T2');
  answer = 'ended';
  await clock.advance(60_000);
  assert.equal(socket.state, 'stopped');
  assert.equal(seen.halted.at(-1).action, 'login');
});

test('a refused auth renews the token and offers it again; refused twice, it reconnects with a fresh token', async () => {
  for (const code of ['unauthorized', 'token_expired']) {
    const { clock, sockets, socket, calls, seen } = setup({ lifetimeMs: 60_000 });
    const refuse = (request) => sockets[0].receive({ type: 'reply', ref: request.ref, ok: false, error: { code, message: 'no' } });
    socket.start();
    sockets[0].welcome();
    await clock.advance(44_000);
    assert.equal(calls.refresh, 1);
    const first = sockets[0].lastSent('auth');
    assert.equal(first.token, 'T1');
    refuse(first);
    await clock.settle();
    assert.equal(calls.refresh, 2, `${code}: renewed again at once`);
    const second = sockets[0].lastSent('auth');
    assert.equal(second.token, 'T2');
    refuse(second);
    await clock.settle();
    assert.deepEqual(sockets[0].closedWith, { code: 1000, reason: 'new token' });
    assert.equal(sockets.length, 2, 'a new connection right away');
    assert.deepEqual(sockets[1].protocols, ['chat.v1', 'bearer.T2']);
    sockets[1].welcome();
    assert.equal(sockets[1].lastSent('auth'), undefined, 'connected with the fresh token: nothing to hand over');
    assert.equal(socket.state, 'open');
    assert.equal(seen.halted.length, 0);
  }
});

test('an auth accepted on the second try keeps the connection', async () => {
  const { clock, sockets, socket, calls } = setup({ lifetimeMs: 60_000 });
  socket.start();
  sockets[0].welcome();
  await clock.advance(44_000);
  const first = sockets[0].lastSent('auth');
  sockets[0].receive({ type: 'reply', ref: first.ref, ok: false, error: { code: 'unauthorized', message: 'no' } });
  await clock.settle();
  sockets[0].reply(sockets[0].lastSent('auth'), { expires_at: clock.t + 60_000 });
  await clock.settle();
  assert.equal(calls.refresh, 2);
  assert.equal(socket.wsToken, 'T2');
  // The next renewal goes as usual, and a refusal then is again first answered by a renewal.
  await clock.advance(44_000);
  assert.equal(calls.refresh, 3);
  const third = sockets[0].lastSent('auth');
  assert.equal(third.token, 'T3');
  sockets[0].receive({ type: 'reply', ref: third.ref, ok: false, error: { code: 'unauthorized', message: 'no' } });
  await clock.settle();
  assert.equal(calls.refresh, 4);
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].closedWith, null);
});

test('reconnecting with a nearly expired token refreshes it first', async () => {
  const { clock, sockets, socket, calls } = setup({ lifetimeMs: 60_000 });
  socket.start();
  sockets[0].welcome();
  socket.halt(); // no renewal timer: simulate a laptop asleep past the renewal time
  socket.running = true;
  await clock.advance(57_000);
  sockets[0].drop(1006);
  await clock.advance(1000);
  assert.equal(calls.refresh, 1);
  assert.deepEqual(sockets.at(-1).protocols, ['chat.v1', 'bearer.T1']);
});

test('a token renewed during the handshake is sent once welcomed', async () => {
  const { sockets, socket, session } = setup();
  socket.start();
  session.tokenValue = 'NEW';
  sockets[0].welcome();
  assert.equal(sockets[0].lastSent('auth').token, 'NEW');
});

test('requests time out; a silent connection is replaced', async () => {
  const { clock, sockets, socket } = setup();
  socket.start();
  sockets[0].welcome({ ws_ping_secs: 10 });
  sockets[0].silent = true;
  const r = assert.rejects(socket.request('rooms'), { code: 'timeout' });
  await clock.advance(10_000);
  await r;
  // Nothing heard for the ping interval: a ping request; unanswered: reconnect.
  await clock.advance(5_000);
  const ping = sockets[0].lastSent('ping');
  assert.ok(ping, 'a keepalive ping was sent');
  await clock.advance(10_000);
  assert.equal(sockets[0].closedWith.code, 4000);
  assert.equal(socket.lastClose.code, 1006);
  await clock.advance(1_000);
  assert.equal(sockets.length, 2);
});

test('stop closes normally and nothing reconnects; restart reconnects at once', async () => {
  const { clock, sockets, socket } = setup();
  socket.start();
  sockets[0].welcome();
  socket.restart();
  assert.deepEqual(sockets[0].closedWith, { code: 1000, reason: 'reconnecting' });
  assert.equal(sockets.length, 2);
  sockets[0].drop(1000); // the old socket's late close is ignored
  assert.equal(socket.state, 'connecting');
  sockets[1].welcome();
  socket.stop();
  assert.equal(sockets[1].closedWith.code, 1000);
  assert.equal(socket.state, 'stopped');
  await clock.advance(600_000);
  assert.equal(sockets.length, 2);
});

test('reconnectNow skips the backoff wait', async () => {
  const { sockets, socket } = setup();
  socket.start();
  sockets[0].welcome();
  sockets[0].drop(1006);
  assert.equal(socket.state, 'waiting');
  socket.reconnectNow();
  assert.equal(sockets.length, 2);
});

test('a tab replaced by another keeps its token fresh and can take over later', async () => {
  const { clock, sockets, socket, calls, seen } = setup({ lifetimeMs: 60_000 });
  socket.start();
  sockets[0].welcome();
  sockets[0].drop(4001, 'replaced');
  assert.equal(seen.halted.at(-1).action, 'stop');
  await clock.advance(300_000);
  assert.equal(sockets.length, 1, 'does not fight the other tab');
  assert.ok(calls.refresh >= 5, `renewed ${calls.refresh} times while stopped`);
  socket.start();
  assert.equal(sockets.length, 2);
  assert.deepEqual(sockets[1].protocols, ['chat.v1', `bearer.T${calls.refresh}`]);
  assert.equal(seen.halted.length, 1);
});

test('logging out stops renewing', async () => {
  const { clock, sockets, socket, calls } = setup({ lifetimeMs: 60_000 });
  socket.start();
  sockets[0].welcome();
  socket.stop();
  await clock.advance(300_000);
  assert.equal(calls.refresh, 0);
});
