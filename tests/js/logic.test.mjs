// Unit tests of the web client's pure logic (public/js/logic.mjs): node --test tests/js/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  backoffDelay,
  charCount,
  continuesRun,
  conversationKey,
  dayLabel,
  describeApiError,
  describeChatError,
  describeClose,
  describeRefusedHandshake,
  displayNameProblem,
  hueIndex,
  mergeMessages,
  parseKey,
  renewalDelay,
  textProblem,
  validRoomName,
  validUsername,
} from '../../public/js/logic.mjs';

const m = (id, extra = {}) => ({ id, from: 'alice', text: `m${id}`, ts: 1_700_000_000_000 + id, ...extra });
const ids = (list) => list.map((x) => x.id);

test('mergeMessages appends, prepends and interleaves without duplicates', () => {
  const base = [m(3), m(5), m(7)];
  assert.deepEqual(ids(mergeMessages(base, [m(9), m(8)])), [3, 5, 7, 8, 9]);
  assert.deepEqual(ids(mergeMessages(base, [m(1), m(2)])), [1, 2, 3, 5, 7]);
  assert.deepEqual(ids(mergeMessages(base, [m(6), m(5), m(4), m(10)])), [3, 4, 5, 6, 7, 10]);
  assert.deepEqual(ids(mergeMessages([], [m(2), m(1), m(2)])), [1, 2]);
  assert.deepEqual(ids(mergeMessages(base, [m(8), m(8)])), [3, 5, 7, 8]);
  // Nothing new: the same array comes back, so callers can tell nothing changed.
  assert.equal(mergeMessages(base, [m(5), m(3)]), base);
  assert.equal(mergeMessages(base, []), base);
  // The inputs are left alone.
  const incoming = [m(2), m(1)];
  mergeMessages(base, incoming);
  assert.deepEqual(ids(base), [3, 5, 7]);
  assert.deepEqual(ids(incoming), [2, 1]);
});

test('mergeMessages keeps the first copy of an id', () => {
  const merged = mergeMessages([m(1, { text: 'original' })], [m(1, { text: 'again' }), m(2)]);
  assert.deepEqual(merged.map((x) => x.text), ['original', 'm2']);
});

test('backoffDelay grows exponentially with equal jitter and a cap', () => {
  const low = { random: () => 0 };
  const high = { random: () => 1 };
  assert.deepEqual([0, 1, 2, 3, 4].map((a) => backoffDelay(a, low)), [250, 500, 1000, 2000, 4000]);
  assert.deepEqual([0, 1, 2, 3, 4].map((a) => backoffDelay(a, high)), [500, 1000, 2000, 4000, 8000]);
  assert.equal(backoffDelay(20, high), 30000);
  assert.equal(backoffDelay(20, low), 15000);
  assert.equal(backoffDelay(1000, high), 30000, 'huge attempts do not overflow');
  assert.equal(backoffDelay(2, { baseMs: 100, maxMs: 300, random: () => 0.5 }), 225);
  for (let i = 0; i < 200; i += 1) {
    const d = backoffDelay(3);
    assert.ok(d >= 2000 && d <= 4000, `${d}`);
  }
});

test('renewalDelay renews well before expiry', () => {
  assert.equal(renewalDelay(3_600_000), 3_299_000, 'an hour: five minutes and a second early');
  assert.equal(renewalDelay(600_000), 449_000, 'ten minutes: after three quarters');
  assert.equal(renewalDelay(8_000), 5_000);
  assert.equal(renewalDelay(1_000), 500, 'never a busy loop');
  assert.equal(renewalDelay(-5_000), 500, 'already expired: right away');
  for (const life of [2_000, 10_000, 60_000, 86_400_000]) {
    assert.ok(renewalDelay(life) <= life - 1000, `${life}`);
  }
});

test('describeClose words every close code and picks the next step', () => {
  const cases = {
    1000: 'reconnect',
    1001: 'reconnect',
    1003: 'reconnect',
    1006: 'reconnect',
    1008: 'reconnect',
    1009: 'reconnect',
    1013: 'reconnect',
    4000: 'reconnect',
    4001: 'stop',
    4002: 'login',
    4003: 'login',
    4999: 'reconnect',
  };
  for (const [code, action] of Object.entries(cases)) {
    const d = describeClose(Number(code));
    assert.equal(d.action, action, code);
    assert.match(d.text, /^[A-Z].*\.$/, `${code}: a sentence`);
  }
  assert.match(describeClose(1001).text, /restarting/);
  assert.match(describeClose(1008).text, /too many messages/);
  assert.match(describeClose(4001).text, /another tab/);
  assert.match(describeClose(4003).text, /password was changed/);
  assert.match(describeClose(4002).text, /expired/);
});

test('a refused handshake is explained by what the token check said', () => {
  const other = describeRefusedHandshake('ok');
  assert.equal(other.action, 'wait');
  assert.equal(other.text, 'The chat is open in another tab, window or device, and this server allows only one at a time. This page connects once that one closes.');
  assert.deepEqual(describeRefusedHandshake('ended'), { text: 'Your session has ended. Please log in again.', action: 'login' });
  assert.equal(describeRefusedHandshake('retry'), null, 'the server is unreachable: nothing more is known');
});

test('describeApiError speaks plainly', () => {
  assert.equal(describeApiError({ code: 'username_taken' }), 'That username is already taken. Choose another one.');
  assert.match(describeApiError({ code: 'weak_password' }), /at least 8 characters/);
  assert.equal(describeApiError({ code: 'invalid_credentials' }), 'Wrong username or password.');
  assert.equal(describeApiError({ code: 'invalid_credentials' }, 'profile'), 'The current password is wrong.');
  assert.equal(describeApiError({ code: 'rate_limited', retryAfter: 42 }), 'Too many attempts. Try again in 42 seconds.');
  assert.equal(describeApiError({ code: 'rate_limited', retryAfter: 1 }), 'Too many attempts. Try again in 1 second.');
  assert.equal(describeApiError({ code: 'rate_limited', retryAfter: 3599 }), 'Too many attempts. Try again in 60 minutes.');
  assert.match(describeApiError({ code: 'rate_limited', retryAfter: null }), /Wait a moment/);
  assert.match(describeApiError({ code: 'registration_closed' }), /closed/);
  assert.match(describeApiError({ code: 'network' }), /Cannot reach the server/);
  assert.equal(describeApiError({ code: 'bad_request', message: 'display_name must be 1-64 characters' }), 'display_name must be 1-64 characters');
  assert.match(describeApiError({ code: 'mystery' }), /went wrong/);
});

test('describeChatError speaks plainly', () => {
  assert.match(describeChatError({ code: 'invalid_room' }), /1 to 64/);
  assert.equal(describeChatError({ code: 'empty_text', message: 'text must contain at least one visible character' }), 'A message needs at least one visible character.');
  assert.equal(describeChatError({ code: 'too_many_rooms', message: 'a connection may be in at most 100 rooms; leave one first' }), 'A connection may be in at most 100 rooms; leave one first.');
  assert.match(describeChatError({ code: 'too_many_rooms' }), /Leave one first/);
  assert.equal(
    describeChatError({ code: 'too_many_subscriptions', message: 'an account may be subscribed to at most 2 users; unsubscribe from one first' }),
    'An account may be subscribed to at most 2 users; unsubscribe from one first.',
  );
  assert.match(describeChatError({ code: 'too_many_subscriptions' }), /Unsubscribe from one first/);
  assert.equal(describeChatError({ code: 'unknown_user', message: 'no user named zed' }), 'No user named zed.');
  assert.match(describeChatError({ code: 'rate_limited' }), /too fast/);
  assert.match(describeChatError({ code: 'disconnected' }), /Not connected/);
  assert.match(describeChatError({ code: 'timeout' }), /in time/);
});

test('names follow the server rules', () => {
  for (const ok of ['lobby', 'a', 'dev-ops_2', 'x'.repeat(64)]) assert.ok(validRoomName(ok), ok);
  for (const bad of ['', 'a b', 'a.b', 'é', 'x'.repeat(65), '#dev', null]) assert.ok(!validRoomName(bad), String(bad));
  for (const ok of ['bob', 'a.b-c_d', 'x'.repeat(32)]) assert.ok(validUsername(ok), ok);
  for (const bad of ['ab', 'a b', 'x'.repeat(33), 'üser', undefined]) assert.ok(!validUsername(bad), String(bad));
});

test('conversation keys', () => {
  assert.equal(conversationKey({ type: 'message', room: 'dev' }, 'me'), 'room:dev');
  assert.equal(conversationKey({ type: 'direct', from: 'me', to: 'bob' }, 'me'), 'dm:bob');
  assert.equal(conversationKey({ type: 'direct', from: 'bob', to: 'me' }, 'me'), 'dm:bob');
  assert.equal(conversationKey({ type: 'notification' }, 'me'), null);
  assert.deepEqual(parseKey('dm:bob'), { kind: 'dm', name: 'bob' });
  assert.deepEqual(parseKey('room:a:b'), { kind: 'room', name: 'a:b' });
});

test('day labels and runs', () => {
  const now = new Date(2024, 5, 15, 12, 0).getTime();
  assert.equal(dayLabel(new Date(2024, 5, 15, 0, 1).getTime(), now), 'Today');
  assert.equal(dayLabel(new Date(2024, 5, 14, 23, 59).getTime(), now), 'Yesterday');
  assert.notEqual(dayLabel(new Date(2024, 5, 13, 12, 0).getTime(), now), 'Yesterday');
  const a = { from: 'a', ts: now };
  assert.ok(continuesRun(a, { from: 'a', ts: now + 60_000 }));
  assert.ok(!continuesRun(a, { from: 'b', ts: now + 60_000 }));
  assert.ok(!continuesRun(a, { from: 'a', ts: now + 6 * 60_000 }));
  assert.ok(!continuesRun(null, a));
});

test('textProblem counts characters as the server does, not UTF-16 units', () => {
  const emoji = '😀'.repeat(4000);
  assert.equal(emoji.length, 8000, 'what maxlength would count');
  assert.equal(textProblem(emoji), '', '4000 characters are allowed');
  assert.equal(textProblem('a'.repeat(4000)), '');
  assert.equal(textProblem('a'.repeat(4001)), 'That is 1 character too long: a message can have at most 4000 characters.');
  assert.equal(textProblem(`${emoji}😀😀`), 'That is 2 characters too long: a message can have at most 4000 characters.');
  assert.equal(textProblem('héllo', { maxChars: 4 }), 'That is 1 character too long: a message can have at most 4 characters.');
  // Within the characters but not the frame size: control characters are escaped as \u00XX.
  assert.equal(textProblem('\u0001'.repeat(3000)), 'That message is too big to send. Make it shorter.');
  assert.equal(textProblem('x'.repeat(100), { maxChars: 4000, maxBytes: 250 }), 'That message is too big to send. Make it shorter.');
  assert.equal(textProblem('x'.repeat(40), { maxChars: 4000, maxBytes: 250 }), '');
});

test('small helpers', () => {
  assert.equal(charCount('héllo 😀'), 7);
  assert.equal(hueIndex('alice'), hueIndex('alice'));
  for (const name of ['a', 'bob', 'ünïcödé']) assert.ok(hueIndex(name) >= 0 && hueIndex(name) < 12);
});

test('display names are checked by the server\'s rules before it is asked', () => {
  assert.equal(displayNameProblem('Alice'), '');
  assert.equal(displayNameProblem('😀'.repeat(64)), '', 'an emoji is one character');
  assert.match(displayNameProblem(''), /Enter a display name/);
  assert.match(displayNameProblem('x'.repeat(65)), /at most 64 characters \(this one has 65\)/);
  assert.match(displayNameProblem('ad\u200Bmin'), /invisible/, 'zero-width space');
  assert.match(displayNameProblem('\u202Eevil'), /invisible/, 'right-to-left override');
  assert.match(displayNameProblem('tab\there'), /control/);
});
