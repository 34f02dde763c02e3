// Unit tests of the resync after a (re)connect (public/js/sync.mjs) against a fake
// server: rejoining rooms, the account's subscriptions and direct conversations, and
// catching up without gaps while live events keep coming.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChatState } from '../../public/js/state.mjs';
import { historyTarget, resync } from '../../public/js/sync.mjs';

const me = { id: 1, username: 'alice', display_name: 'alice' };
const ids = (c) => c.messages.map((x) => x.id);

/**
 * A chat server, as seen by alice, with stored room and direct messages, that answers
 * like chatd. `before(type, fields)` runs before each answer: the test delivers live
 * events there, the way they interleave with replies on a real connection.
 */
function fakeServer(state) {
  const stored = new Map(); // conversation key -> messages, oldest first
  const requests = [];
  const keep = (key, m) => {
    if (!stored.has(key)) stored.set(key, []);
    stored.get(key).push(m);
    return m;
  };
  const server = {
    requests,
    subscriptions: [],
    before: () => {},
    failOn: null,
    store(room, id, from = 'bob') {
      return keep(`room:${room}`, { type: 'message', id, room, from, text: `t${id}`, ts: 1000 + id });
    },
    /** A direct message between alice and `other`, stored. */
    direct(other, id, from = other) {
      const to = from === 'alice' ? other : 'alice';
      return keep(`dm:${other}`, { type: 'direct', id, from, to, text: `d${id}`, ts: 1000 + id });
    },
    /** A message sent while this client is connected: stored, and delivered live. */
    live(room, id, from = 'bob') {
      state.applyEvent(server.store(room, id, from));
    },
    async call(type, fields = {}) {
      requests.push({ type, ...fields });
      await null;
      await server.before(type, fields);
      if (server.failOn && server.failOn(type, fields)) {
        const err = new Error('the connection closed');
        err.code = 'disconnected';
        throw err;
      }
      const all = stored.get(fields.room !== undefined ? `room:${fields.room}` : `dm:${fields.with}`) || [];
      switch (type) {
        case 'join':
          return { room: fields.room, members: ['alice', 'bob'] };
        case 'leave':
          return { room: fields.room };
        case 'subscriptions':
          return { users: [...server.subscriptions].sort() };
        case 'conversations':
          return {
            conversations: [...stored]
              .filter(([key]) => key.startsWith('dm:'))
              .map(([key, list]) => ({ with: key.slice(3), last_id: list.at(-1).id, ts: list.at(-1).ts }))
              .sort((a, b) => b.last_id - a.last_id)
              .slice(0, fields.limit || 50),
          };
        case 'history': {
          const limit = fields.limit || 50;
          if (fields.after !== undefined) {
            const newer = all.filter((m) => m.id > fields.after);
            return { messages: newer.slice(0, limit), more: newer.length > limit };
          }
          return { messages: all.slice(-limit), more: all.length > limit };
        }
        default:
          throw new Error(`unexpected request ${type}`);
      }
    },
  };
  return server;
}

function deps(server, state, extra = {}) {
  const loaded = [];
  return {
    loaded,
    call: (type, fields) => server.call(type, fields),
    loadLatest: async (key) => {
      loaded.push(key);
      const reply = await server.call('history', { ...historyTarget(key), limit: 50 });
      state.addLatest(key, reply.messages, reply.more);
    },
    changed: () => {},
    stale: () => false,
    historyMax: 3,
    ...extra,
  };
}

/** alice holds lobby (1, 2, in view) and dev (3, 4); then she was offline while 5-9 were sent. */
function offlineScenario() {
  const state = new ChatState(me);
  const server = fakeServer(state);
  for (const room of ['lobby', 'dev']) state.joined(room, ['alice', 'bob']);
  server.live('lobby', 1);
  server.live('lobby', 2);
  server.live('dev', 3);
  server.live('dev', 4);
  state.addLatest('room:lobby', [], false);
  state.addLatest('room:dev', [], false);
  state.select('room:dev');
  state.select('room:lobby');
  for (let id = 5; id <= 9; id += 1) server.store(id % 2 ? 'dev' : 'lobby', id);
  return { state, server };
}

test('a live message arriving before the catch-up does not move where it starts', async () => {
  const { state, server } = offlineScenario();
  // Rooms are rejoined first; while the lobby (in view) catches up, a message in dev
  // arrives live, and alice sends one in the lobby herself.
  server.before = (type, fields) => {
    if (type === 'history' && fields.room === 'lobby' && !state.conversation('room:dev').messages.some((m) => m.id === 10)) {
      server.live('dev', 10);
      server.live('lobby', 11, 'alice');
    }
  };
  await resync(state, { rooms: ['lobby'] }, deps(server, state));
  const history = server.requests.filter((r) => r.type === 'history');
  assert.deepEqual(history.map((r) => [r.room, r.after]), [['lobby', 2], ['dev', 4], ['dev', 9]]);
  assert.deepEqual(ids(state.conversation('room:lobby')), [1, 2, 6, 8, 11]);
  assert.deepEqual(ids(state.conversation('room:dev')), [3, 4, 5, 7, 9, 10], 'no gap before the live message');
  assert.equal(state.conversation('room:dev').unread, 4, 'everything new in dev, not in view');
  assert.equal(state.conversation('room:lobby').unread, 0, 'in view');
  for (const key of ['room:lobby', 'room:dev']) assert.equal(state.conversation(key).missedAfter, null, `${key} caught up`);
});

test('a resync cut short by another drop leaves its mark for the next one', async () => {
  const { state, server } = offlineScenario();
  // The first connection delivers a live message in dev, then drops while catching up.
  server.before = (type, fields) => {
    if (type === 'history' && fields.room === 'lobby') server.live('dev', 10);
  };
  server.failOn = (type, fields) => type === 'history' && fields.room === 'dev';
  await assert.rejects(resync(state, { rooms: ['lobby'] }, deps(server, state)), { code: 'disconnected' });
  assert.equal(state.conversation('room:dev').missedAfter, 4);
  // The next welcome: dev still catches up from 4, not from the live 10.
  server.before = () => {};
  server.failOn = null;
  server.requests.length = 0;
  await resync(state, { rooms: ['lobby'] }, deps(server, state));
  const dev = server.requests.filter((r) => r.type === 'history' && r.room === 'dev');
  assert.equal(dev[0].after, 4);
  assert.deepEqual(ids(state.conversation('room:dev')), [3, 4, 5, 7, 9, 10]);
});

test('rejoins the rooms, leaves the ones the user left, loads what was never loaded', async () => {
  const state = new ChatState(me);
  const server = fakeServer(state);
  state.joined('dev', []);
  state.joined('gone', []);
  server.store('dev', 1);
  const d = deps(server, state);
  let joinedCalls = 0;
  d.joined = () => {
    joinedCalls += 1;
  };
  const realCall = d.call;
  d.call = (type, fields) => {
    if (type === 'join' && fields.room === 'gone') {
      const err = new Error('bad room');
      err.code = 'invalid_room';
      return Promise.reject(err);
    }
    return realCall(type, fields);
  };
  await resync(state, { rooms: ['lobby'] }, d);
  assert.deepEqual(server.requests.filter((r) => r.type === 'join' || r.type === 'leave').map((r) => `${r.type} ${r.room}`), ['leave lobby', 'join dev']);
  assert.equal(state.conversations.has('room:gone'), false);
  assert.equal(joinedCalls, 1);
  assert.deepEqual(d.loaded, ['room:dev']);
  assert.deepEqual(ids(state.conversation('room:dev')), [1]);
});

test('a room the server will not rejoin is dropped and reported; the rest of the resync goes on', async () => {
  const state = new ChatState(me);
  const server = fakeServer(state);
  state.joined('dev', []);
  state.joined('full', []);
  state.joined('ops', []);
  server.store('ops', 1);
  const d = deps(server, state);
  const refused = [];
  d.refusedRoom = (room, err) => refused.push(`${room}: ${err.code}`);
  const realCall = d.call;
  d.call = (type, fields) => {
    if (type === 'join' && fields.room === 'full') {
      const err = new Error('the server holds at most 3 rooms at once; join one that exists');
      err.code = 'too_many_rooms';
      return Promise.reject(err);
    }
    return realCall(type, fields);
  };
  await resync(state, { rooms: ['lobby'] }, d);
  assert.deepEqual(refused, ['full: too_many_rooms']);
  assert.equal(state.conversations.has('room:full'), false);
  assert.ok(server.requests.some((r) => r.type === 'join' && r.room === 'ops'), 'the next room is rejoined');
  assert.ok(server.requests.some((r) => r.type === 'subscriptions'), 'the account is still loaded');
  assert.deepEqual(ids(state.conversation('room:ops')), [1], 'and caught up');
});

test('a connection lost while rejoining ends the resync', async () => {
  const state = new ChatState(me);
  const server = fakeServer(state);
  state.joined('dev', []);
  const d = deps(server, state);
  d.call = () => {
    const err = new Error('gone');
    err.code = 'disconnected';
    return Promise.reject(err);
  };
  await assert.rejects(resync(state, { rooms: ['lobby'] }, d), { code: 'disconnected' });
  assert.equal(state.conversations.has('room:dev'), true, 'nothing dropped');
});

test('a newer welcome stops an older resync', async () => {
  const { state, server } = offlineScenario();
  let stale = false;
  server.before = (type) => {
    if (type === 'history') stale = true;
  };
  await resync(state, { rooms: ['lobby'] }, deps(server, state, { stale: () => stale, historyMax: 1 }));
  assert.equal(server.requests.filter((r) => r.type === 'history').length, 1, 'stopped after the page in flight');
  assert.deepEqual(ids(state.conversation('room:lobby')), [1, 2, 6], 'the page that came is kept');
  assert.equal(state.conversation('room:lobby').missedAfter, 6, 'and the mark moved past it');
  assert.equal(state.conversation('room:dev').missedAfter, 4);
});

test("the account's subscriptions replace the local ones; a thread from someone new appears, loaded, with its unread", async () => {
  const state = new ChatState(me);
  const server = fakeServer(state);
  state.joined('lobby', []);
  state.addLatest('room:lobby', [], false);
  state.select('room:lobby');
  state.subscriptions = new Set(['stale']);
  server.subscriptions = ['carol', 'bob'];
  // While alice was away: erin, who never talked to her, wrote twice; bob answered her.
  server.direct('bob', 5, 'alice');
  server.direct('bob', 6);
  server.direct('bob', 7, 'alice');
  server.direct('erin', 20);
  server.direct('erin', 21);
  let accountLoaded = 0;
  const d = deps(server, state, { account: () => { accountLoaded += 1; } });
  await resync(state, { rooms: ['lobby'] }, d);
  assert.deepEqual([...state.subscriptions].sort(), ['bob', 'carol']);
  assert.equal(accountLoaded, 1);
  assert.deepEqual(state.directThreads().map((c) => c.name), ['erin', 'bob'], 'newest first');
  const erin = state.conversation('dm:erin');
  assert.deepEqual(ids(erin), [20, 21]);
  assert.equal(erin.unread, 2, 'never read in this browser');
  assert.equal(state.conversation('dm:bob').unread, 0, 'alice answered after bob: read elsewhere');
  assert.equal(state.totalUnread(), 2);
  assert.deepEqual(server.requests.find((r) => r.type === 'conversations'), { type: 'conversations', limit: 50 });
});

test('threads read up to their newest message wait until opened; loaded ones with nothing new are not asked', async () => {
  const state = new ChatState(me);
  const server = fakeServer(state);
  server.direct('bob', 5);
  server.direct('carol', 8);
  server.direct('carol', 9);
  server.direct('dan', 12);
  // From the last visit: bob and carol were read up to 5 and 8; dan's thread is held.
  state.restore({ rooms: [], read: { 'dm:bob': 5, 'dm:carol': 8 } });
  state.addLatest('dm:dan', [{ type: 'direct', id: 12, from: 'dan', to: 'alice', text: 'd12', ts: 1012 }], false);
  state.select('dm:dan');
  await resync(state, { rooms: [] }, deps(server, state));
  const history = server.requests.filter((r) => r.type === 'history').map((r) => r.with);
  assert.deepEqual(history, ['carol'], 'only the thread with something new');
  assert.equal(state.conversation('dm:carol').unread, 1, 'what came after the read mark');
  assert.equal(state.conversation('dm:bob').loaded, false);
  assert.equal(state.conversation('dm:bob').unread, 0);
  assert.equal(state.conversation('dm:dan').missedAfter, null);
});

test('a closed thread stays closed until something newer comes', async () => {
  const state = new ChatState(me);
  const server = fakeServer(state);
  server.direct('dan', 30);
  state.restore({ rooms: [], closed: { 'dm:dan': 30 } });
  await resync(state, { rooms: [] }, deps(server, state));
  assert.equal(state.conversations.has('dm:dan'), false);
  server.direct('dan', 31);
  await resync(state, { rooms: [] }, deps(server, state));
  assert.equal(state.conversations.has('dm:dan'), true);
  assert.equal(state.closed.has('dm:dan'), false);
  assert.deepEqual(ids(state.conversation('dm:dan')), [30, 31]);
  assert.equal(state.conversation('dm:dan').unread, 2, 'no read mark: all of it after her own (none)');
});

test('a refused subscriptions or conversations request does not hold up catching up', async () => {
  const { state, server } = offlineScenario();
  state.subscriptions = new Set(['bob']);
  const d = deps(server, state);
  const realCall = d.call;
  d.call = (type, fields) => {
    if (type === 'subscriptions' || type === 'conversations') {
      const err = new Error('try again');
      err.code = 'internal_error';
      return Promise.reject(err);
    }
    return realCall(type, fields);
  };
  await resync(state, { rooms: ['lobby'] }, d);
  assert.deepEqual([...state.subscriptions], ['bob'], 'kept as it was');
  assert.deepEqual(ids(state.conversation('room:dev')), [3, 4, 5, 7, 9]);
  assert.deepEqual(ids(state.conversation('room:lobby')), [1, 2, 6, 8]);
  // A lost connection, though, ends the resync (the next welcome starts over).
  d.call = (type, fields) => {
    if (type === 'conversations') {
      const err = new Error('the connection closed');
      err.code = 'disconnected';
      return Promise.reject(err);
    }
    return realCall(type, fields);
  };
  await assert.rejects(resync(state, { rooms: ['lobby'] }, d), { code: 'disconnected' });
});
