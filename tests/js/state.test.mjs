// Unit tests of the client's chat model (public/js/state.mjs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChatState, MAX_NOTIFICATIONS } from '../../public/js/state.mjs';

const me = { id: 1, username: 'alice', display_name: 'alice' };
const msg = (id, room, from = 'bob') => ({ type: 'message', id, room, from, text: `t${id}`, ts: 1000 + id });
const ids = (c) => c.messages.map((x) => x.id);

function withRooms(...rooms) {
  const s = new ChatState(me);
  for (const r of rooms) s.joined(r, ['alice', 'bob']);
  return s;
}

test('live messages count as unread only outside the conversation in view', () => {
  const s = withRooms('lobby', 'dev');
  s.select('room:lobby');
  assert.deepEqual(s.applyEvent(msg(1, 'lobby')), { key: 'room:lobby', added: 1 });
  s.applyEvent(msg(2, 'dev'));
  s.applyEvent(msg(3, 'dev'));
  s.applyEvent(msg(4, 'dev', 'alice'));
  assert.equal(s.conversation('room:lobby').unread, 0);
  assert.equal(s.conversation('room:dev').unread, 2, 'own messages are not unread');
  assert.equal(s.totalUnread(), 2);
  s.select('room:dev');
  assert.equal(s.conversation('room:dev').unread, 0);
});

test('duplicates (event + reply, history overlap) are dropped and not counted', () => {
  const s = withRooms('lobby', 'dev');
  s.select('room:lobby');
  s.applyEvent(msg(5, 'dev'));
  assert.deepEqual(s.applyEvent(msg(5, 'dev')), { key: 'room:dev', added: 0 });
  assert.equal(s.addMessages('room:dev', [msg(4, 'dev'), msg(5, 'dev'), msg(6, 'dev')], { countUnread: true }), 2);
  assert.deepEqual(ids(s.conversation('room:dev')), [4, 5, 6]);
  assert.equal(s.conversation('room:dev').unread, 3);
});

test('messages for rooms not joined are ignored', () => {
  const s = withRooms('lobby');
  assert.equal(s.applyEvent(msg(1, 'elsewhere')), null);
  assert.equal(s.conversations.has('room:elsewhere'), false);
});

test('direct messages open a thread keyed by the other user', () => {
  const s = withRooms('lobby');
  s.select('room:lobby');
  s.applyEvent({ type: 'direct', id: 7, from: 'bob', to: 'alice', text: 'hi', ts: 1 });
  s.applyEvent({ type: 'direct', id: 8, from: 'alice', to: 'bob', text: 'yo', ts: 2 });
  s.applyEvent({ type: 'direct', id: 9, from: 'carol', to: 'alice', text: 'hey', ts: 3 });
  assert.deepEqual(ids(s.conversation('dm:bob')), [7, 8]);
  assert.equal(s.conversation('dm:bob').unread, 1);
  assert.deepEqual(s.directThreads().map((c) => c.name), ['carol', 'bob'], 'most recent first');
});

test('presence keeps the member list of joined rooms', () => {
  const s = withRooms('dev');
  s.applyEvent({ type: 'presence', room: 'dev', user: 'carol', event: 'join' });
  assert.deepEqual([...s.conversation('room:dev').members].sort(), ['alice', 'bob', 'carol']);
  s.applyEvent({ type: 'presence', room: 'dev', user: 'bob', event: 'leave' });
  assert.deepEqual([...s.conversation('room:dev').members].sort(), ['alice', 'carol']);
  s.applyEvent({ type: 'presence', room: 'dev', user: 'alice', event: 'leave' });
  assert.ok(s.conversation('room:dev').members.has('alice'), 'never removes oneself');
  assert.equal(s.applyEvent({ type: 'presence', room: 'other', user: 'x', event: 'join' }), null);
  s.left('dev');
  assert.equal(s.conversation('room:dev').joined, false);
  assert.deepEqual(s.joinedRooms(), []);
});

test('history pages: latest, older, catch-up', () => {
  const s = withRooms('dev');
  s.select('room:dev');
  s.addLatest('room:dev', [msg(10, 'dev'), msg(11, 'dev')], true);
  const c = s.conversation('room:dev');
  assert.equal(c.loaded, true);
  assert.equal(c.more, true);
  s.addOlder('room:dev', [msg(8, 'dev'), msg(9, 'dev')], false);
  assert.equal(c.more, false);
  assert.equal(s.firstId('room:dev'), 8);
  s.addMessages('room:dev', [msg(11, 'dev'), msg(12, 'dev')], { countUnread: true });
  assert.deepEqual(ids(c), [8, 9, 10, 11, 12]);
  assert.equal(s.lastId('room:dev'), 12);
  assert.equal(c.unread, 0, 'in view');
});

test('notifications: newest first, deduplicated, capped, unseen counted', () => {
  const s = new ChatState(me);
  for (let i = 1; i <= MAX_NOTIFICATIONS + 5; i += 1) {
    s.applyEvent({ type: 'notification', id: i, from: 'bob', text: `n${i}`, ts: i });
  }
  assert.equal(s.applyEvent({ type: 'notification', id: 50, from: 'bob', text: 'n50', ts: 50 }), null);
  assert.equal(s.notifications.length, MAX_NOTIFICATIONS);
  assert.equal(s.notifications[0].id, MAX_NOTIFICATIONS + 5);
  assert.equal(s.unseenNotifications, MAX_NOTIFICATIONS + 5);
});

test('only view preferences survive a reload: rooms, the view, read marks, closed threads', () => {
  const s = withRooms('lobby', 'dev');
  s.applyEvent({ type: 'direct', id: 1, from: 'bob', to: 'alice', text: 'x', ts: 1 });
  s.applyEvent({ type: 'direct', id: 2, from: 'carol', to: 'alice', text: 'y', ts: 2 });
  s.applyEvent(msg(3, 'dev'));
  s.subscriptions.add('bob');
  s.select('dm:bob');
  s.select('room:dev');
  s.closeThread('dm:carol');
  const saved = JSON.parse(JSON.stringify(s.prefs()));
  // Subscriptions and threads are the server's (subscriptions, conversations).
  assert.deepEqual(saved, { rooms: ['dev', 'lobby'], current: 'room:dev', read: { 'room:dev': 3, 'dm:bob': 1 }, closed: { 'dm:carol': 2 } });
  const t = new ChatState(me);
  t.restore(saved);
  assert.deepEqual(t.joinedRooms().map((c) => c.name), ['dev', 'lobby']);
  assert.deepEqual(t.directThreads(), []);
  assert.equal(t.subscriptions.size, 0);
  assert.equal(t.current, 'room:dev');
  assert.equal(t.readMarks.get('dm:bob'), 1);
  assert.equal(t.closed.get('dm:carol'), 2);
  // The thread in view is restored even before the server lists it.
  const u = new ChatState(me);
  u.restore({ rooms: [], current: 'dm:bob' });
  assert.equal(u.current, 'dm:bob');
  assert.ok(u.conversations.has('dm:bob'));
  t.restore(null);
  t.remove('room:dev');
  assert.equal(t.current, null);
});

test('read marks: what is seen in view; unread counted from them when history is first loaded', () => {
  const s = withRooms('dev', 'lobby');
  s.select('room:lobby');
  s.applyEvent(msg(1, 'lobby'));
  assert.equal(s.readMarks.get('room:lobby'), 1, 'a live message in view is read');
  s.applyEvent(msg(2, 'dev'));
  assert.equal(s.readMarks.has('room:dev'), false);
  // A reload: dev was read up to 4 earlier, lobby never, and a thread never seen here.
  const t = withRooms('dev', 'lobby');
  t.restore({ rooms: [], read: { 'room:dev': 4 } });
  t.select('room:other');
  t.addLatest('room:dev', [msg(3, 'dev'), msg(4, 'dev'), msg(5, 'dev'), msg(6, 'dev', 'alice'), msg(7, 'dev')], false);
  assert.equal(t.conversation('room:dev').unread, 2, '5 and 7: after the mark, not her own');
  t.addLatest('room:lobby', [msg(8, 'lobby')], false);
  assert.equal(t.conversation('room:lobby').unread, 0, 'a room never seen here: its backlog is not unread');
  const dm = (id, from) => ({ type: 'direct', id, from, to: from === 'alice' ? 'bob' : 'alice', text: '', ts: id });
  t.addLatest('dm:bob', [dm(10, 'bob'), dm(11, 'alice'), dm(12, 'bob'), dm(13, 'bob')], false);
  assert.equal(t.conversation('dm:bob').unread, 2, 'a thread never seen here: what came after her last reply');
  t.addLatest('dm:bob', [dm(13, 'bob')], false);
  assert.equal(t.conversation('dm:bob').unread, 2, 'only counted the first time');
  t.select('dm:bob');
  assert.equal(t.readMarks.get('dm:bob'), 13);
});
