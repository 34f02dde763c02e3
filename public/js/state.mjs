// The client's model of the chat: conversations (rooms and direct messages) with their
// messages, unread counts and members; who is online; subscriptions; notifications;
// and the view preferences remembered across reloads (prefs/restore).
// No DOM and no network: the app feeds it events and replies, the UI reads it.

import { conversationKey, dmKey, mergeMessages, parseKey, roomKey } from './logic.mjs';

/** Notifications kept in the list; older ones are dropped. */
export const MAX_NOTIFICATIONS = 100;

/** Read marks and closed threads remembered across reloads (the most recent ones). */
export const MAX_REMEMBERED = 200;

/** One conversation: a room or a direct-message thread with one user. */
export function newConversation(key) {
  const { kind, name } = parseKey(key);
  return {
    key,
    kind,
    name,
    /** Messages sorted by id, no duplicates. */
    messages: [],
    /** Messages received while the conversation was not in view. */
    unread: 0,
    /** Whether older messages exist on the server than the oldest one held. */
    more: true,
    /** Whether the latest page of history has been fetched once. */
    loaded: false,
    /**
     * After a reconnect, until caught up: the id after which messages may be missing
     * (null when complete). See sync.mjs.
     */
    missedAfter: null,
    /** Rooms only: usernames of the members, from the join reply and presence. */
    members: new Set(),
    /** Rooms only: whether this client is in the room. */
    joined: false,
    /** Direct messages only: the newest id the server listed for the thread (`conversations`). */
    latestId: 0,
  };
}

export class ChatState {
  constructor(me) {
    /** { id, username, display_name } */
    this.me = me;
    this.conversations = new Map();
    /** The key of the conversation in view. */
    this.current = null;
    /** Usernames online (from the `users` request). */
    this.online = [];
    /** Every room with members on the server: [{ name, members }]. */
    this.directory = [];
    /** Usernames this user is subscribed to (the server's list, from `subscriptions`). */
    this.subscriptions = new Set();
    /** Per conversation key, the newest id shown while it was in view. */
    this.readMarks = new Map();
    /** Threads the user closed: key -> the newest id then; a newer message reopens them. */
    this.closed = new Map();
    /** Notifications, newest first. */
    this.notifications = [];
    /** Notifications received since the list was last looked at. */
    this.unseenNotifications = 0;
  }

  conversation(key) {
    let c = this.conversations.get(key);
    if (!c) {
      c = newConversation(key);
      this.conversations.set(key, c);
    }
    return c;
  }

  get currentConversation() {
    return this.current ? this.conversations.get(this.current) || null : null;
  }

  /** Rooms this client is in, sorted by name. */
  joinedRooms() {
    return [...this.conversations.values()]
      .filter((c) => c.kind === 'room' && c.joined)
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Direct-message threads, most recent activity first. */
  directThreads() {
    const last = (c) => Math.max(c.messages.length ? c.messages[c.messages.length - 1].id : 0, c.latestId);
    return [...this.conversations.values()]
      .filter((c) => c.kind === 'dm')
      .sort((a, b) => last(b) - last(a) || a.name.localeCompare(b.name));
  }

  /** Total unread messages, for the page title. */
  totalUnread() {
    let n = 0;
    for (const c of this.conversations.values()) n += c.unread;
    return n;
  }

  /** Shows a conversation: its unread count is cleared. */
  select(key) {
    this.current = key;
    const c = this.conversation(key);
    c.unread = 0;
    this.markRead(key);
    return c;
  }

  /** Remembers that a conversation was seen up to its newest message. */
  markRead(key) {
    const id = this.lastId(key);
    if (id !== null && !(this.readMarks.get(key) >= id)) this.readMarks.set(key, id);
  }

  /**
   * The id after which messages from others in a conversation are unread when its
   * messages are first loaded on this page: its read mark; for a thread never seen in
   * this browser, the user's own last message in it (what came after that reply was not
   * read here); for a room never seen, null (its backlog is not unread).
   */
  unreadSince(c) {
    if (this.readMarks.has(c.key)) return this.readMarks.get(c.key);
    if (c.kind !== 'dm') return null;
    let own = 0;
    for (const m of c.messages) if (m.from === this.me.username) own = m.id;
    return own;
  }

  /**
   * Adds messages to a conversation (deduplicated by id). With `countUnread`, the new
   * ones from other users count as unread unless the conversation is in view.
   * Returns how many were new.
   */
  addMessages(key, messages, { countUnread = false } = {}) {
    const c = this.conversation(key);
    const before = c.messages;
    c.messages = mergeMessages(before, messages);
    const added = c.messages.length - before.length;
    if (added > 0 && countUnread && key !== this.current) {
      const known = new Set(before.map((m) => m.id));
      c.unread += messages.filter((m) => !known.has(m.id) && m.from !== this.me.username).length;
    }
    if (key === this.current) this.markRead(key);
    return added;
  }

  /** A history page older than what is held. */
  addOlder(key, messages, more) {
    const c = this.conversation(key);
    c.messages = mergeMessages(c.messages, messages);
    c.more = more;
  }

  /**
   * The latest page of history, fetched when a conversation is first opened or found.
   * The first time, messages from others after the read mark (see unreadSince) count as
   * unread, unless it is in view.
   */
  addLatest(key, messages, more) {
    const c = this.conversation(key);
    const first = !c.loaded;
    const hadOlder = c.messages.length > 0 && messages.length > 0 && c.messages[0].id < messages[0].id;
    c.messages = mergeMessages(c.messages, messages);
    if (!hadOlder) c.more = more;
    c.loaded = true;
    if (key === this.current) {
      this.markRead(key);
    } else if (first) {
      const since = this.unreadSince(c);
      if (since !== null) {
        const unread = c.messages.filter((m) => m.id > since && m.from !== this.me.username).length;
        c.unread = Math.max(c.unread, unread);
      }
    }
  }

  /** The newest id held in a conversation, for catching up with `after`. */
  lastId(key) {
    const c = this.conversations.get(key);
    return c && c.messages.length ? c.messages[c.messages.length - 1].id : null;
  }

  /** The oldest id held, for paging back with `before`. */
  firstId(key) {
    const c = this.conversations.get(key);
    return c && c.messages.length ? c.messages[0].id : null;
  }

  joined(room, members) {
    const c = this.conversation(roomKey(room));
    c.joined = true;
    c.members = new Set(members);
    c.members.add(this.me.username);
    return c;
  }

  left(room) {
    const c = this.conversations.get(roomKey(room));
    if (!c) return;
    c.joined = false;
    c.members = new Set();
    c.unread = 0;
  }

  /** Forgets a conversation (a room left, a thread closed). */
  remove(key) {
    this.conversations.delete(key);
    if (this.current === key) this.current = null;
  }

  /** Closes a thread: it stays closed until a newer message comes (or the user opens it). */
  closeThread(key) {
    const c = this.conversations.get(key);
    if (!c) return;
    this.closed.set(key, Math.max(this.lastId(key) || 0, c.latestId));
    this.remove(key);
  }

  /** Opens a thread the user asked for, closed or not. */
  openThread(key) {
    this.closed.delete(key);
    return this.conversation(key);
  }

  /** The account's subscriptions as the server lists them. */
  setSubscriptions(users) {
    this.subscriptions = new Set(users);
  }

  /**
   * The account's direct conversations as the server lists them ({ with, last_id }):
   * threads not held yet are added (unless closed and nothing newer came), and each
   * learns its newest id. Returns key -> last_id of the listed threads.
   */
  applyConversations(list) {
    const listed = new Map();
    for (const { with: user, last_id: lastId } of list) {
      const key = dmKey(user);
      listed.set(key, lastId);
      if (this.closed.has(key)) {
        if (lastId <= this.closed.get(key)) continue;
        this.closed.delete(key);
      }
      const c = this.conversation(key);
      c.latestId = Math.max(c.latestId, lastId);
    }
    return listed;
  }

  /**
   * Applies a server event. Returns what changed: { key, added } for messages,
   * { room } for presence, { notification } for notifications, or null.
   */
  applyEvent(event) {
    switch (event.type) {
      case 'message':
      case 'direct': {
        const key = conversationKey(event, this.me.username);
        if (event.type === 'message') {
          const room = this.conversations.get(key);
          if (!room || !room.joined) return null;
        } else {
          this.closed.delete(key); // a closed thread opens again with a new message
        }
        const added = this.addMessages(key, [event], { countUnread: true });
        return { key, added };
      }
      case 'presence': {
        const c = this.conversations.get(roomKey(event.room));
        if (!c || !c.joined) return null;
        if (event.event === 'join') c.members.add(event.user);
        else if (event.user !== this.me.username) c.members.delete(event.user);
        return { room: event.room };
      }
      case 'notification': {
        if (this.notifications.some((n) => n.id === event.id)) return null;
        this.notifications.unshift(event);
        this.notifications.length = Math.min(this.notifications.length, MAX_NOTIFICATIONS);
        this.unseenNotifications += 1;
        return { notification: event };
      }
      default:
        return null;
    }
  }

  /**
   * What to remember across reloads for this user: view preferences only. The rooms
   * kept open (the server forgets them with the connection), the conversation in view,
   * read marks and closed threads. Subscriptions and threads come from the server.
   */
  prefs() {
    return {
      rooms: this.joinedRooms().map((c) => c.name),
      current: this.current,
      read: newest(this.readMarks),
      closed: newest(this.closed),
    };
  }

  /** Restores the view preferences (before connecting). */
  restore(prefs) {
    if (!prefs) return;
    for (const room of prefs.rooms || []) this.conversation(roomKey(room)).joined = true;
    for (const [key, id] of Object.entries(prefs.read || {})) if (Number.isFinite(id)) this.readMarks.set(key, id);
    for (const [key, id] of Object.entries(prefs.closed || {})) if (Number.isFinite(id)) this.closed.set(key, id);
    const current = typeof prefs.current === 'string' ? prefs.current : null;
    if (current && (this.conversations.has(current) || (parseKey(current).kind === 'dm' && !this.closed.has(current)))) {
      this.conversation(current);
      this.current = current;
    }
  }
}

/** The MAX_REMEMBERED entries with the highest ids, as a plain object. */
function newest(map) {
  return Object.fromEntries([...map].sort((a, b) => b[1] - a[1]).slice(0, MAX_REMEMBERED));
}
