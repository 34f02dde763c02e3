// The client's model of the chat: conversations (rooms and direct messages) with their
// messages, unread counts and members; who is online; subscriptions; notifications.
// No DOM and no network: the app feeds it events and replies, the UI reads it.

import { conversationKey, dmKey, mergeMessages, parseKey, roomKey } from './logic.mjs';

/** Notifications kept in the list; older ones are dropped. */
export const MAX_NOTIFICATIONS = 100;

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
    /** Usernames this user is subscribed to. */
    this.subscriptions = new Set();
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
    const last = (c) => (c.messages.length ? c.messages[c.messages.length - 1].id : 0);
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
    return c;
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
    return added;
  }

  /** A history page older than what is held. */
  addOlder(key, messages, more) {
    const c = this.conversation(key);
    c.messages = mergeMessages(c.messages, messages);
    c.more = more;
  }

  /** The latest page of history, fetched when a conversation is opened the first time. */
  addLatest(key, messages, more) {
    const c = this.conversation(key);
    const hadOlder = c.messages.length > 0 && messages.length > 0 && c.messages[0].id < messages[0].id;
    c.messages = mergeMessages(c.messages, messages);
    if (!hadOlder) c.more = more;
    c.loaded = true;
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

  /** What to remember across reloads for this user. */
  prefs() {
    return {
      rooms: this.joinedRooms().map((c) => c.name),
      threads: this.directThreads().map((c) => c.name),
      subscriptions: [...this.subscriptions].sort(),
      current: this.current,
    };
  }

  /** Restores remembered rooms, threads and subscriptions (before connecting). */
  restore(prefs) {
    if (!prefs) return;
    for (const room of prefs.rooms || []) this.conversation(roomKey(room)).joined = true;
    for (const user of prefs.threads || []) this.conversation(dmKey(user));
    for (const user of prefs.subscriptions || []) this.subscriptions.add(user);
    if (prefs.current && this.conversations.has(prefs.current)) this.current = prefs.current;
  }
}
