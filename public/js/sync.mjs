// Keeping the client's conversations in step with the server after every (re)connect:
// rejoin the rooms (the server forgot them), load the account's subscriptions and
// direct conversations, then fetch what was missed with `history after`. No DOM and no
// socket of its own: the app passes a request function and callbacks, the tests a fake
// server.

import { parseKey, roomKey } from './logic.mjs';

/** Catching up one conversation stops after this many pages and reloads the latest. */
export const MAX_CATCH_UP_PAGES = 20;

/**
 * Marks where each loaded conversation must be caught up from: the newest id it holds
 * the moment a connection is welcomed, before anything is awaited. Live events and the
 * page's own sends are merged while the resync runs, and catching up from an id they
 * brought in would skip everything missed before them. The mark stays until the
 * catch-up completes, so a resync cut short by another drop leaves it for the next one
 * (which must not start from the live messages of the connection in between either).
 * Conversations never loaded get their latest page instead.
 */
export function markCatchUp(state) {
  for (const c of state.conversations.values()) {
    if (c.loaded && c.missedAfter === null) {
      c.missedAfter = c.messages.length > 0 ? c.messages[c.messages.length - 1].id : 0;
    }
  }
}

/** The `room` or `with` field of a history request for a conversation. */
export function historyTarget(key) {
  const { kind, name } = parseKey(key);
  return kind === 'room' ? { room: name } : { with: name };
}

/** Direct conversations asked for after a welcome (the server's default). */
export const CONVERSATIONS_LIMIT = 50;

/**
 * Resynchronises `state` after a welcome. Call it synchronously from the welcome
 * handler: its first step marks where to catch up from.
 *
 * deps:
 * - call(type, fields): a chat request, resolving with the reply's data
 * - loadLatest(key): fetches the latest page of a conversation
 * - changed(key): messages were added to a conversation
 * - joined(): the rooms are rejoined (render, refresh the directory)
 * - account(): subscriptions and conversations are loaded (render)
 * - refusedRoom(room, err): the server would not rejoin this room (it was dropped)
 * - stale(): whether a newer welcome (or a log out) overtook this resync
 * - historyMax: the largest history page (from the welcome's limits)
 */
/** Failures of a request that mean the connection went, not that the server said no. */
const CONNECTION_GONE = new Set(['disconnected', 'timeout']);

export async function resync(state, welcome, deps) {
  markCatchUp(state);
  const { call, stale } = deps;
  // Rooms the server put this connection in that the user left earlier: leave again.
  for (const room of welcome.rooms || []) {
    const c = state.conversations.get(roomKey(room));
    if (!c || !c.joined) {
      await call('leave', { room });
      if (stale()) return;
    }
  }
  for (const room of state.joinedRooms().map((c) => c.name)) {
    try {
      const reply = await call('join', { room });
      if (stale()) return;
      state.joined(room, reply.members);
    } catch (err) {
      // A lost connection ends the resync (the next welcome starts over). A refusal
      // (a bad name, the server's room limits) drops that room and lets the rest go on.
      if (!err.code || CONNECTION_GONE.has(err.code)) throw err;
      state.remove(roomKey(room));
      if (deps.refusedRoom) deps.refusedRoom(room, err);
    }
  }
  if (deps.joined) deps.joined();
  // What the server keeps for the account: who it follows, whom it talks to (a message
  // from someone new while offline is found here). A refusal of either leaves what is
  // known as it is and does not hold up catching up; a lost connection ends the resync.
  const subscriptions = await refusedAsNull(call('subscriptions', {}));
  if (stale()) return;
  if (subscriptions) state.setSubscriptions(subscriptions.users);
  const conversations = await refusedAsNull(call('conversations', { limit: CONVERSATIONS_LIMIT }));
  if (stale()) return;
  const listed = conversations ? state.applyConversations(conversations.conversations) : new Map();
  if (deps.account) deps.account();
  // Fetch what was missed: the conversation in view first.
  const keys = [...state.conversations.keys()].sort((a, b) => (b === state.current) - (a === state.current));
  for (const key of keys) {
    if (stale()) return;
    await catchUp(state, key, deps, listed);
  }
}

/** A reply's data, or null if the server refused the request (not if the connection went). */
async function refusedAsNull(request) {
  try {
    return await request;
  } catch (err) {
    if (err.code === 'disconnected' || err.code === 'timeout') throw err;
    return null;
  }
}

/**
 * Brings one conversation up to date: the latest page if it was never loaded, else
 * every message after its mark (paged), counted as unread; then clears the mark.
 * `listed` (key -> newest id, from `conversations`) spares the requests for threads
 * the server says have nothing new: read ones not loaded yet wait until opened.
 */
export async function catchUp(state, key, { call, loadLatest, changed, stale, historyMax = 100 }, listed = new Map()) {
  const c = state.conversations.get(key);
  if (!c) return;
  const newest = listed.get(key);
  if (!c.loaded) {
    const read = state.readMarks.get(key);
    if (newest !== undefined && read !== undefined && newest <= read && key !== state.current) return;
    await loadLatest(key);
    return;
  }
  if (c.missedAfter === null) return;
  if (newest !== undefined && newest <= c.missedAfter) {
    c.missedAfter = null;
    return;
  }
  for (let page = 0; ; page += 1) {
    if (page >= MAX_CATCH_UP_PAGES) {
      // Too much was missed to page through: start again from the latest messages.
      c.messages = [];
      c.loaded = false;
      c.more = true;
      c.missedAfter = null;
      await loadLatest(key);
      return;
    }
    const reply = await call('history', { ...historyTarget(key), after: c.missedAfter, limit: historyMax });
    if (state.conversations.get(key) !== c) return;
    state.addMessages(key, reply.messages, { countUnread: true });
    if (reply.messages.length > 0) c.missedAfter = reply.messages[reply.messages.length - 1].id;
    changed(key);
    if (!reply.more || reply.messages.length === 0) {
      c.missedAfter = null;
      return;
    }
    if (stale()) return;
  }
}
