// Pure logic of the chatd client: no DOM, no network, no clock of its own.
// Everything here is unit-tested with `node --test tests/js/`.

/** Usernames: 3-32 of [A-Za-z0-9_.-] (the server's rule). */
export function validUsername(name) {
  return typeof name === 'string' && /^[A-Za-z0-9_.-]{3,32}$/.test(name);
}

/** Room names: 1-64 of [A-Za-z0-9_-] (the server's rule). */
export function validRoomName(name) {
  return typeof name === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(name);
}

/**
 * Merges chat items into a list sorted by id, dropping duplicates (same id). The
 * inputs are not modified; `existing` must already be sorted and unique.
 * Returns the merged list (the same array object when nothing was added).
 */
export function mergeMessages(existing, incoming) {
  if (!incoming || incoming.length === 0) return existing;
  const sorted = [...incoming].sort((a, b) => a.id - b.id);
  const last = existing.length ? existing[existing.length - 1].id : -Infinity;
  // The common cases: new messages at the end, or an older page at the start.
  if (sorted[0].id > last) return existing.concat(dedupeSorted(sorted));
  const first = existing.length ? existing[0].id : Infinity;
  if (sorted[sorted.length - 1].id < first) return dedupeSorted(sorted).concat(existing);
  const byId = new Map();
  for (const m of existing) byId.set(m.id, m);
  let added = false;
  for (const m of sorted) {
    if (!byId.has(m.id)) {
      byId.set(m.id, m);
      added = true;
    }
  }
  if (!added) return existing;
  return [...byId.values()].sort((a, b) => a.id - b.id);
}

function dedupeSorted(sorted) {
  return sorted.filter((m, i) => i === 0 || m.id !== sorted[i - 1].id);
}

/**
 * Delay before reconnect attempt number `attempt` (0 for the first retry): exponential
 * growth from `baseMs`, capped at `maxMs`, with "equal jitter" (a random half on top of
 * a fixed half), so many clients dropped at once do not come back in lockstep and the
 * wait is never close to zero.
 */
export function backoffDelay(attempt, { baseMs = 500, maxMs = 30000, random = Math.random } = {}) {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  const half = exp / 2;
  return Math.round(half + random() * half);
}

/**
 * When to renew a token that is valid for `lifetimeMs` from now: after three quarters
 * of its life, but at least five minutes before it expires when it lives long enough,
 * and one second earlier than that because token expiry has a one-second granularity.
 */
export function renewalDelay(lifetimeMs) {
  const target = Math.max(lifetimeMs * 0.75, lifetimeMs - 300_000) - 1000;
  return Math.max(500, Math.round(target));
}

/**
 * What a WebSocket close code means for the user and what the client does next:
 * `reconnect` (with backoff), `login` (the session is over: log in again), or
 * `stop` (stay disconnected until the user asks).
 */
export function describeClose(code) {
  switch (code) {
    case 1000:
      return { text: 'Disconnected.', action: 'reconnect' };
    case 1001:
      return { text: 'The server is restarting.', action: 'reconnect' };
    case 1003:
      return { text: 'The server refused a message it could not read.', action: 'reconnect' };
    case 1006:
      return { text: 'The connection to the server was lost.', action: 'reconnect' };
    case 1008:
      return { text: 'Disconnected for sending too many messages too quickly.', action: 'reconnect' };
    case 1009:
      return { text: 'Disconnected because a message was too big.', action: 'reconnect' };
    case 1011:
      return { text: 'The server ran into an internal error.', action: 'reconnect' };
    case 1013:
      return { text: 'Disconnected because the connection was too slow to keep up.', action: 'reconnect' };
    case 4000:
      return { text: 'Disconnected after being idle.', action: 'reconnect' };
    case 4001:
      return { text: 'The chat was opened in another tab or window.', action: 'stop' };
    case 4002:
      return { text: 'Your session expired. Please log in again.', action: 'login' };
    case 4003:
      return { text: 'Your password was changed. Please log in again.', action: 'login' };
    default:
      return { text: `Disconnected (code ${code}).`, action: 'reconnect' };
  }
}

/**
 * Why a WebSocket handshake failed, judged from a check of the token right after it
 * (browsers do not tell a page why a handshake failed). `verdict` is that check: 'ok'
 * (the server answers and the token holds: the upgrade itself was refused, which for a
 * valid token means another session holds the user's one connection, under
 * `duplicate_sessions = reject`), 'ended' (log in again) or 'retry' (the server could
 * not be asked: it is down or unreachable). Returns null when nothing more is known.
 */
export function describeRefusedHandshake(verdict) {
  switch (verdict) {
    case 'ok':
      return {
        text: 'The chat is open in another tab, window or device, and this server allows only one at a time. This page connects once that one closes.',
        action: 'wait',
      };
    case 'ended':
      return { text: 'Your session has ended. Please log in again.', action: 'login' };
    default:
      return null;
  }
}

/**
 * Plain words for an HTTP API error. `context` tells apart the same code in different
 * places ("profile": invalid_credentials means the current password is wrong).
 */
export function describeApiError(err, context = '') {
  const code = err && err.code;
  switch (code) {
    case 'invalid_username':
      return 'Usernames are 3 to 32 characters: letters, digits, "_", "." or "-".';
    case 'weak_password':
      return 'That password is too short: use at least 8 characters.';
    case 'username_taken':
      return 'That username is already taken. Choose another one.';
    case 'invalid_credentials':
      return context === 'profile' ? 'The current password is wrong.' : 'Wrong username or password.';
    case 'rate_limited': {
      const secs = Number(err.retryAfter);
      if (!(secs > 0)) return 'Too many attempts. Wait a moment and try again.';
      if (secs < 120) return `Too many attempts. Try again in ${secs} second${secs === 1 ? '' : 's'}.`;
      return `Too many attempts. Try again in ${Math.ceil(secs / 60)} minutes.`;
    }
    case 'registration_closed':
      return 'Registration is closed on this server.';
    case 'unauthorized':
    case 'token_expired':
      return 'Your session has ended. Please log in again.';
    case 'network':
      return 'Cannot reach the server. Check your connection and try again.';
    case 'bad_request':
      return err.message || 'The server did not accept that.';
    default:
      return (err && err.message) || 'Something went wrong. Please try again.';
  }
}

/** Plain words for a refused chat request (an `ok: false` reply, or a local failure). */
export function describeChatError(err) {
  const code = err && err.code;
  switch (code) {
    case 'invalid_room':
      return 'Room names are 1 to 64 letters, digits, "_" or "-".';
    case 'not_member':
      return 'You are not in that room.';
    case 'too_many_rooms':
      return err.message ? `${capitalize(err.message)}.` : 'You are in as many rooms as the server allows. Leave one first.';
    case 'too_many_subscriptions':
      return err.message
        ? `${capitalize(err.message)}.`
        : 'You follow as many users as the server allows. Unsubscribe from one first.';
    case 'unknown_user':
      return err.message ? `${capitalize(err.message)}.` : 'There is no user by that name.';
    case 'rate_limited':
      return 'You are sending too fast. Wait a moment and try again.';
    case 'empty_text':
      return 'A message needs at least one visible character.';
    case 'timeout':
      return 'The server did not answer in time. Try again.';
    case 'disconnected':
      return 'Not connected to the server. Try again once reconnected.';
    case 'unauthorized':
    case 'token_expired':
      return 'Your session has ended. Please log in again.';
    case 'internal_error':
      return 'The server could not do that right now. Try again.';
    default:
      return (err && err.message) || 'That did not work. Try again.';
  }
}

function capitalize(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** The conversation key of a chat event: `room:<name>` or `dm:<other user>`. */
export function conversationKey(event, me) {
  if (event.type === 'message') return roomKey(event.room);
  if (event.type === 'direct') return dmKey(event.from === me ? event.to : event.from);
  return null;
}

export function roomKey(name) {
  return `room:${name}`;
}

export function dmKey(user) {
  return `dm:${user}`;
}

/** Splits a conversation key into its kind and name. */
export function parseKey(key) {
  const i = key.indexOf(':');
  return { kind: key.slice(0, i) === 'dm' ? 'dm' : 'room', name: key.slice(i + 1) };
}

/** Midnight of the local day of `ts` (ms), as a number usable as a key. */
export function dayStart(ts) {
  const d = new Date(ts);
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

/** "Today", "Yesterday", or a date, for the day separators of the message list. */
export function dayLabel(ts, now, locale = undefined) {
  const day = dayStart(ts);
  const today = dayStart(now);
  if (day === today) return 'Today';
  const yesterday = dayStart(today - 12 * 3600 * 1000);
  if (day === yesterday) return 'Yesterday';
  const sameYear = new Date(ts).getFullYear() === new Date(now).getFullYear();
  return new Intl.DateTimeFormat(locale, {
    weekday: 'long',
    day: 'numeric',
    month: 'long',
    ...(sameYear ? {} : { year: 'numeric' }),
  }).format(new Date(ts));
}

/** Hours and minutes of `ts`, for the time shown next to a message. */
export function clockTime(ts, locale = undefined) {
  return new Intl.DateTimeFormat(locale, { hour: '2-digit', minute: '2-digit' }).format(new Date(ts));
}

/**
 * Whether message `b` continues a run by the same sender started by `a` (same day,
 * within five minutes): it is then shown without repeating the sender.
 */
export function continuesRun(a, b) {
  return Boolean(a) && a.from === b.from && b.ts - a.ts < 5 * 60_000 && dayStart(a.ts) === dayStart(b.ts);
}

/** A stable palette index (0-11) for a username, for its avatar colour. */
export function hueIndex(name) {
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 12;
}

/** Length of a string in Unicode scalar values (how the server counts characters). */
export function charCount(s) {
  let n = 0;
  for (const _ of s) n += 1;
  return n;
}

/**
 * Characters the server refuses in a display name besides control characters: they
 * show nothing or reorder the text around them, so one name could pass for another.
 */
const INVISIBLE_OR_BIDI = /[\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF\u061C\u180E]/u;

/**
 * Why a display name would be refused, in plain words, or '' if it is fine: the
 * server's rules (1-64 characters counted as it counts them, no control, invisible or
 * bidirectional formatting characters), checked before asking it.
 */
export function displayNameProblem(name, maxChars = 64) {
  const n = charCount(name);
  if (n === 0) return 'Enter a display name.';
  if (n > maxChars) return `A display name can have at most ${maxChars} characters (this one has ${n}).`;
  if (/\p{Cc}/u.test(name) || INVISIBLE_OR_BIDI.test(name)) {
    return 'A display name cannot contain control characters or invisible formatting characters.';
  }
  return '';
}

/** Room for the rest of a request frame around its text (type, room or recipient, ref). */
const FRAME_OVERHEAD_BYTES = 200;

/**
 * Why a chat text (a message or a publish) cannot be sent, in plain words, or '' if it
 * can. The server counts characters as Unicode scalar values, where an emoji is one and
 * not two as in the browser's `maxlength`, and it closes the connection (1009) over
 * `max_message_bytes`, which a text of many escaped control characters can reach.
 */
export function textProblem(text, { maxChars = 4000, maxBytes = 16384 } = {}) {
  const n = charCount(text);
  if (n > maxChars) {
    const over = n - maxChars;
    return `That is ${over} character${over === 1 ? '' : 's'} too long: a message can have at most ${maxChars} characters.`;
  }
  if (new TextEncoder().encode(JSON.stringify(text)).length + FRAME_OVERHEAD_BYTES > maxBytes) {
    return 'That message is too big to send. Make it shorter.';
  }
  return '';
}
