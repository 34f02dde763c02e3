// The controller: wires the accounts API, the chat socket, the state and the UI.
// It owns the session (token in sessionStorage), keeps the conversations in step with
// the server after every (re)connect, and turns user actions into requests.

import { Api, isAuthError } from './api.mjs';
import { describeApiError, describeChatError, displayNameProblem, dmKey, roomKey, textProblem, validRoomName, validUsername } from './logic.mjs';
import { ChatSocket } from './socket.mjs';
import { ChatState } from './state.mjs';
import { historyTarget, resync } from './sync.mjs';
import { setMessage } from './dom.mjs';
import { Ui } from './ui.mjs';

/** sessionStorage key of the session: { token, expiresAt, user }. Per tab; gone on log out. */
const SESSION_KEY = 'chatd.session';
/**
 * localStorage key prefix of a user's view preferences: rooms kept open, the conversation
 * in view, read marks, closed threads (see ChatState.prefs). Subscriptions and threads
 * are the server's. Log out removes them.
 */
const PREFS_PREFIX = 'chatd.prefs.';
/** How often the room directory and the online list are refreshed while connected. */
const POLL_MS = 15_000;
/** Page size when opening a conversation or scrolling back. */
const PAGE = 50;

export class App {
  constructor({ storage = window.sessionStorage, prefsStorage = window.localStorage } = {}) {
    this.storage = storage;
    this.prefsStorage = prefsStorage;
    this.api = new Api();
    this.ui = new Ui({
      open: (key) => this.open(key),
      joinRoom: (name) => this.joinRoom(name),
      openThread: (user) => this.openThread(user),
      subscribe: (user) => this.subscribe(user),
      unsubscribe: (user) => this.unsubscribe(user),
      nearTop: () => this.loadOlder(),
      reconnectNow: () => this.socket && this.socket.reconnectNow(),
      notificationsSeen: () => this.notificationsSeen(),
    });
    this.els = this.ui.els;
    this.session = null;
    this.socket = null;
    this.state = null;
    /** Whether this chat session has been connected at least once (reconnect wording). */
    this.connectedOnce = false;
    /** Set while this page changes the password: the 4003 close that follows is expected. */
    this.changingPassword = false;
    /** Conversations with a history request in flight: key -> 'latest' | 'older'. */
    this.loading = new Map();
    /** Bumped on every welcome: a resync that is overtaken by a newer one stops. */
    this.syncGeneration = 0;
    this.pollTimer = null;
    this.presenceTimer = null;
    this.limits = { max_text_chars: 4000, max_message_bytes: 16384, history_max: 100 };
  }

  boot() {
    this.bindAuthForms();
    this.bindChatControls();
    this.bindProfile();
    window.addEventListener('online', () => this.socket && this.socket.reconnectNow());
    const saved = this.loadSession();
    if (saved) this.startChat(saved);
    else this.ui.showAuth();
  }

  // ---- session -----------------------------------------------------------------------

  loadSession() {
    try {
      const s = JSON.parse(this.storage.getItem(SESSION_KEY) || 'null');
      if (s && typeof s.token === 'string' && s.user && typeof s.user.username === 'string') return s;
    } catch {
      // Corrupt or unavailable storage: log in again.
    }
    return null;
  }

  saveSession() {
    try {
      this.storage.setItem(SESSION_KEY, JSON.stringify(this.session));
    } catch {
      // Storage full or disabled: the session lives in memory only.
    }
  }

  forgetSession() {
    try {
      this.storage.removeItem(SESSION_KEY);
    } catch {
      // Nothing stored.
    }
  }

  loadPrefs(username) {
    try {
      return JSON.parse(this.prefsStorage.getItem(PREFS_PREFIX + username) || 'null');
    } catch {
      return null;
    }
  }

  savePrefs() {
    if (!this.state) return;
    try {
      this.prefsStorage.setItem(PREFS_PREFIX + this.state.me.username, JSON.stringify(this.state.prefs()));
    } catch {
      // Not remembered across reloads.
    }
  }

  forgetPrefs(username) {
    try {
      this.prefsStorage.removeItem(PREFS_PREFIX + username);
    } catch {
      // Nothing stored.
    }
  }

  /** What the socket needs from the session: the token, and ways to renew and check it. */
  socketSession() {
    const verdict = (err) => (isAuthError(err) ? 'ended' : 'retry');
    return {
      token: () => this.session.token,
      expiresAt: () => this.session.expiresAt,
      refresh: async () => {
        try {
          const fresh = await this.api.refresh(this.session.token);
          this.session = { ...fresh, user: { ...this.session.user, ...fresh.user } };
          this.saveSession();
          return 'ok';
        } catch (err) {
          return verdict(err);
        }
      },
      verify: async () => {
        try {
          await this.api.me(this.session.token);
          return 'ok';
        } catch (err) {
          return verdict(err);
        }
      },
    };
  }

  startChat(session) {
    this.session = session;
    this.saveSession();
    this.state = new ChatState({ ...session.user });
    const prefs = this.loadPrefs(session.user.username);
    this.state.restore(prefs);
    this.hadPrefs = Boolean(prefs);
    this.connectedOnce = false;
    this.loading.clear();
    this.ui.showChat(this.state.me);
    this.renderAll();
    const url = `${window.location.protocol === 'http:' ? 'ws' : 'wss'}://${window.location.host}/ws`;
    this.socket = new ChatSocket({ url, session: this.socketSession() });
    this.socket.on('status', (status) => {
      if (status.state === 'open') this.connectedOnce = true;
      this.ui.renderStatus(status, { connectedOnce: this.connectedOnce });
    });
    this.socket.on('welcome', (welcome) => this.onWelcome(welcome));
    this.socket.on('event', (event) => this.onEvent(event));
    this.socket.on('halted', (halt) => this.onHalted(halt));
    this.socket.start();
    clearInterval(this.pollTimer);
    this.pollTimer = setInterval(() => this.refreshLists(), POLL_MS);
  }

  /** Leaves the chat for the login screen, with a notice saying why. */
  endChat(notice) {
    clearInterval(this.pollTimer);
    clearTimeout(this.presenceTimer);
    if (this.socket) this.socket.stop();
    this.socket = null;
    this.forgetSession();
    if (this.session) this.els.loginUsername.value = this.session.user.username;
    this.session = null;
    this.state = null;
    this.changingPassword = false;
    this.ui.showAuth({ notice });
  }

  /** Logs out: the token and everything this browser kept about the user's chat go. */
  logout() {
    if (this.state) this.forgetPrefs(this.state.me.username);
    this.endChat('You are logged out.');
  }

  onHalted({ text, action }) {
    if (action === 'login') {
      if (this.changingPassword) return;
      this.endChat(text);
    } else {
      // Replaced by another tab: stay put until the user wants this one back.
      this.ui.showBanner(text, { label: 'Use chat here', run: () => this.socket && this.socket.start() });
    }
  }

  // ---- requests ----------------------------------------------------------------------

  /** A chat request, retried a couple of times when the server says to slow down. */
  async call(type, fields = {}) {
    for (let tries = 0; ; tries += 1) {
      try {
        return await this.socket.request(type, fields);
      } catch (err) {
        if (err.code !== 'rate_limited' || tries >= 2) throw err;
        await new Promise((resolve) => setTimeout(resolve, 1000 * (tries + 1)));
        if (!this.socket) throw err;
      }
    }
  }

  // ---- after a (re)connect -----------------------------------------------------------

  onWelcome(welcome) {
    const gen = ++this.syncGeneration;
    const state = this.state;
    state.me = { ...state.me, ...welcome.user };
    this.session.user = { ...this.session.user, ...welcome.user };
    this.saveSession();
    this.ui.renderMe(state.me);
    if (welcome.limits) this.limits = { ...this.limits, ...welcome.limits };
    if (!this.hadPrefs) {
      for (const room of welcome.rooms || []) state.conversation(roomKey(room)).joined = true;
      this.hadPrefs = true;
    }
    if (!state.current) {
      const first = state.joinedRooms()[0] || state.directThreads()[0];
      if (first) state.select(first.key);
    }
    this.renderAll();
    // Until a conversation was chosen the composer was disabled, which dropped the focus
    // it got at log in: give it back, unless the user has moved on to something else.
    const active = document.activeElement;
    if ((!active || active === document.body) && !this.els.composerText.disabled) this.els.composerText.focus();
    const stale = () => gen !== this.syncGeneration || this.state !== state;
    // Nothing is awaited before resync() marks where each conversation must catch up from.
    resync(state, welcome, {
      call: (type, fields) => this.call(type, fields),
      loadLatest: (key) => this.loadLatest(key),
      changed: (key) => this.renderConversationChange(key),
      joined: () => {
        this.renderAll();
        this.refreshLists();
      },
      refusedRoom: (room, err) => {
        this.ui.toast(`Could not rejoin #${room}`, describeChatError(err), { kind: 'error' });
      },
      account: () => {
        this.ui.renderSidebar(state);
        this.ui.renderPeople(state);
        this.ui.renderNotifications(state);
        this.savePrefs();
      },
      stale,
      historyMax: this.limits.history_max,
    }).catch((err) => {
      // Disconnected in the middle: the next welcome starts over.
      if (err.code !== 'disconnected' && err.code !== 'timeout') console.warn('resync failed', err);
    });
  }

  async loadLatest(key) {
    const state = this.state;
    if (this.loading.has(key)) return;
    this.loading.set(key, 'latest');
    if (key === state.current) this.renderMessages();
    try {
      const reply = await this.call('history', { ...historyTarget(key), limit: PAGE });
      if (this.state !== state || !state.conversations.has(key)) return;
      state.addLatest(key, reply.messages, reply.more);
    } finally {
      this.loading.delete(key);
    }
    this.renderConversationChange(key);
  }

  /** Pages back in the conversation in view (scrolled to the top). */
  async loadOlder() {
    const state = this.state;
    const c = state && state.currentConversation;
    if (!c || !c.loaded || !c.more || this.loading.has(c.key) || !this.socket.isOpen) return;
    const before = state.firstId(c.key);
    if (before === null) return;
    this.loading.set(c.key, 'older');
    this.renderMessages();
    try {
      const reply = await this.call('history', { ...historyTarget(c.key), before, limit: PAGE });
      if (this.state !== state) return;
      state.addOlder(c.key, reply.messages, reply.more);
    } catch (err) {
      this.ui.toast('Could not load older messages', describeChatError(err), { kind: 'error' });
    } finally {
      this.loading.delete(c.key);
    }
    this.renderConversationChange(c.key);
  }

  /** The room directory and who is online. */
  async refreshLists() {
    if (!this.socket || !this.socket.isOpen) return;
    const state = this.state;
    try {
      const [rooms, users] = await Promise.all([this.call('rooms'), this.call('users')]);
      if (this.state !== state) return;
      state.directory = rooms.rooms;
      state.online = users.users;
      this.ui.renderSidebar(state);
      this.ui.renderPeople(state);
      this.ui.renderHeader(state);
    } catch {
      // Retried at the next poll.
    }
  }

  // ---- live events -------------------------------------------------------------------

  onEvent(event) {
    const state = this.state;
    if (!state) return;
    // A new thread may be one the user had closed: it is open again, which is remembered.
    const isNewThread = event.type === 'direct' && !state.conversations.has(dmKey(event.from === state.me.username ? event.to : event.from));
    const change = state.applyEvent(event);
    if (!change) return;
    if (change.key) {
      this.renderConversationChange(change.key);
      if (isNewThread) this.savePrefs();
      if (event.type === 'direct' && event.from !== state.me.username && change.key !== state.current && change.added) {
        this.ui.toast(`Message from ${event.from}`, event.text);
      }
    } else if (change.room) {
      this.ui.renderSidebar(state);
      if (state.current === roomKey(change.room)) {
        this.ui.renderPeople(state);
        this.ui.renderHeader(state);
      }
      // Someone came or went: refresh the online list soon (once for a burst).
      clearTimeout(this.presenceTimer);
      this.presenceTimer = setTimeout(() => this.refreshLists(), 1000);
    } else if (change.notification) {
      const n = change.notification;
      this.ui.toast(`${n.from} published`, n.text);
      if (this.ui.notificationsVisible) state.unseenNotifications = 0;
      this.ui.renderNotifications(state);
    }
  }

  // ---- rendering ---------------------------------------------------------------------

  renderAll() {
    const state = this.state;
    this.ui.renderSidebar(state);
    this.ui.renderHeader(state);
    this.renderMessages();
    this.ui.renderPeople(state);
    this.ui.renderNotifications(state);
  }

  renderMessages() {
    const state = this.state;
    const key = state.current;
    const loading = key ? this.loading.get(key) : null;
    this.ui.renderMessages(state, { loadingOlder: loading === 'older', loadingLatest: loading === 'latest' });
    const c = state.currentConversation;
    // A short first page does not fill the screen, so no scrolling could ask for more.
    if (c && c.loaded && c.more && !loading && this.ui.listNotFull()) {
      setTimeout(() => this.loadOlder(), 0);
    }
  }

  renderConversationChange(key) {
    if (!this.state) return;
    if (key === this.state.current) {
      this.renderMessages();
      this.savePrefs(); // its read mark moved
    }
    this.ui.renderSidebar(this.state);
  }

  // ---- user actions ------------------------------------------------------------------

  /** Shows a conversation; its history is fetched the first time (unless `load` is false). */
  open(key, { load = true } = {}) {
    const state = this.state;
    const c = state.select(key);
    this.savePrefs();
    this.ui.closeDrawers();
    this.renderAll();
    if (load && !c.loaded && this.socket.isOpen) this.loadLatest(key).catch(() => {});
    this.els.composerText.focus();
  }

  async joinRoom(name) {
    setMessage(this.els.joinError, '');
    const room = name.trim().replace(/^#/, '');
    if (!validRoomName(room)) {
      setMessage(this.els.joinError, describeChatError({ code: 'invalid_room' }));
      return false;
    }
    const state = this.state;
    try {
      const reply = await this.call('join', { room });
      if (this.state !== state) return false;
      state.joined(room, reply.members);
      this.open(roomKey(room));
      this.refreshLists();
      return true;
    } catch (err) {
      setMessage(this.els.joinError, describeChatError(err));
      return false;
    }
  }

  async leaveRoom() {
    const state = this.state;
    const c = state.currentConversation;
    if (!c || c.kind !== 'room') return;
    try {
      await this.call('leave', { room: c.name });
    } catch (err) {
      if (err.code !== 'not_member') {
        this.ui.toast(`Could not leave #${c.name}`, describeChatError(err), { kind: 'error' });
        return;
      }
    }
    state.remove(c.key);
    this.selectFallback();
    this.refreshLists();
  }

  closeThread() {
    const state = this.state;
    const c = state.currentConversation;
    if (!c || c.kind !== 'dm') return;
    state.closeThread(c.key);
    this.selectFallback();
  }

  /** After leaving the conversation in view: show another one. */
  selectFallback() {
    const state = this.state;
    const next = state.joinedRooms()[0] || state.directThreads()[0];
    if (next) this.open(next.key);
    else {
      this.savePrefs();
      this.renderAll();
    }
  }

  async openThread(name) {
    setMessage(this.els.dmError, '');
    const user = name.trim().replace(/^@/, '');
    if (!validUsername(user)) {
      setMessage(this.els.dmError, 'Usernames are 3 to 32 letters, digits, "_", "." or "-".');
      return false;
    }
    const state = this.state;
    const key = dmKey(user);
    const existed = state.conversations.has(key);
    state.openThread(key);
    this.open(key, { load: existed });
    if (existed) return true;
    try {
      if (!this.socket.isOpen) return true;
      await this.loadLatest(key);
      return true;
    } catch (err) {
      if (err.code === 'unknown_user' && this.state === state) {
        state.remove(key);
        this.selectFallback();
        setMessage(this.els.dmError, describeChatError(err));
        return false;
      }
      return true;
    }
  }

  async send() {
    const state = this.state;
    const c = state.currentConversation;
    const input = this.els.composerText;
    const text = input.value;
    setMessage(this.els.composerError, '');
    if (!c || text.trim() === '') return;
    const problem = this.textProblem(text);
    if (problem) {
      setMessage(this.els.composerError, problem);
      return;
    }
    input.value = '';
    try {
      const request = c.kind === 'room' ? ['send', { room: c.name, text }] : ['direct', { to: c.name, text }];
      const reply = await this.call(...request);
      if (this.state !== state) return;
      // The event comes too; adding it from the reply as well shows it even if the
      // event is missed, and the merge drops the duplicate.
      const me = state.me.username;
      const event = c.kind === 'room'
        ? { type: 'message', id: reply.id, room: c.name, from: me, text, ts: reply.ts }
        : { type: 'direct', id: reply.id, from: me, to: c.name, text, ts: reply.ts };
      if (state.conversations.has(c.key)) {
        state.addMessages(c.key, [event]);
        this.renderConversationChange(c.key);
      }
    } catch (err) {
      if (input.value === '') input.value = text;
      setMessage(this.els.composerError, describeChatError(err));
    }
  }

  async subscribe(name) {
    setMessage(this.els.subscribeError, '');
    const user = name.trim().replace(/^@/, '');
    if (!validUsername(user)) {
      setMessage(this.els.subscribeError, 'Usernames are 3 to 32 letters, digits, "_", "." or "-".');
      return false;
    }
    const state = this.state;
    try {
      const reply = await this.call('subscribe', { user });
      if (this.state !== state) return false;
      state.subscriptions.add(reply.user);
      this.ui.renderPeople(state);
      this.ui.renderNotifications(state);
      this.ui.toast(`Subscribed to ${reply.user}`, 'You will be notified when they publish.');
      return true;
    } catch (err) {
      const text = err.code === 'bad_request' ? err.message : describeChatError(err);
      setMessage(this.els.subscribeError, text);
      this.ui.toast(`Could not subscribe to ${user}`, text, { kind: 'error' });
      return false;
    }
  }

  async unsubscribe(user) {
    const state = this.state;
    try {
      await this.call('unsubscribe', { user });
    } catch (err) {
      if (err.code !== 'unknown_user') {
        this.ui.toast(`Could not unsubscribe from ${user}`, describeChatError(err), { kind: 'error' });
        return;
      }
    }
    if (this.state !== state) return;
    state.subscriptions.delete(user);
    this.ui.renderPeople(state);
    this.ui.renderNotifications(state);
  }

  async publish() {
    const input = this.els.publishText;
    const text = input.value;
    const result = this.els.publishResult;
    if (text.trim() === '') return;
    const problem = this.textProblem(text);
    if (problem) {
      result.textContent = problem;
      return;
    }
    this.ui.busy(this.els.publishForm, true);
    try {
      const reply = await this.call('publish', { text });
      input.value = '';
      const n = reply.delivered;
      result.textContent = n === 0
        ? 'Published. No subscriber is online right now.'
        : `Published to ${n} subscriber session${n === 1 ? '' : 's'}.`;
    } catch (err) {
      result.textContent = describeChatError(err);
    } finally {
      this.ui.busy(this.els.publishForm, false);
    }
  }

  /** Whether a text fits the server's limits (from the welcome), in plain words if not. */
  textProblem(text) {
    return textProblem(text, { maxChars: this.limits.max_text_chars, maxBytes: this.limits.max_message_bytes });
  }

  notificationsSeen() {
    if (!this.state) return;
    this.state.unseenNotifications = 0;
    this.ui.renderNotifications(this.state);
  }

  // ---- forms -------------------------------------------------------------------------

  bindAuthForms() {
    const { loginForm, registerForm } = this.els;
    loginForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const username = this.els.loginUsername.value.trim();
      const password = this.els.loginPassword.value;
      setMessage(this.els.loginError, '');
      if (!username || !password) {
        setMessage(this.els.loginError, 'Enter your username and password.');
        return;
      }
      this.ui.busy(loginForm, true);
      try {
        const session = await this.api.login(username, password);
        this.els.loginPassword.value = '';
        this.startChat(session);
      } catch (err) {
        setMessage(this.els.loginError, describeApiError(err));
        this.els.loginPassword.select();
      } finally {
        this.ui.busy(loginForm, false);
      }
    });
    registerForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const username = this.els.registerUsername.value.trim();
      const password = this.els.registerPassword.value;
      setMessage(this.els.registerError, '');
      if (!validUsername(username)) {
        setMessage(this.els.registerError, describeApiError({ code: 'invalid_username' }));
        this.els.registerUsername.focus();
        return;
      }
      this.ui.busy(registerForm, true);
      try {
        await this.api.register(username, password);
        const session = await this.api.login(username, password);
        this.els.registerPassword.value = '';
        this.startChat(session);
      } catch (err) {
        setMessage(this.els.registerError, describeApiError(err));
        (err.code === 'weak_password' ? this.els.registerPassword : this.els.registerUsername).focus();
      } finally {
        this.ui.busy(registerForm, false);
      }
    });
  }

  bindChatControls() {
    const els = this.els;
    els.logout.addEventListener('click', () => this.logout());
    els.profileLogout.addEventListener('click', () => this.logout());
    els.leaveRoom.addEventListener('click', () => this.leaveRoom());
    els.closeThread.addEventListener('click', () => this.closeThread());
    els.joinForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (await this.joinRoom(els.joinRoom.value)) els.joinRoom.value = '';
    });
    els.dmForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (await this.openThread(els.dmUser.value)) els.dmUser.value = '';
    });
    els.subscribeForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (await this.subscribe(els.subscribeUser.value)) els.subscribeUser.value = '';
    });
    els.publishForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.publish();
    });
    els.composer.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.send();
    });
    // Enter sends, Shift+Enter starts a new line (not while an IME is composing).
    els.composerText.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        if (!els.composerSend.disabled) this.send();
      }
    });
    els.publishText.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        this.publish();
      }
    });
  }

  bindProfile() {
    const els = this.els;
    const dialog = els.profileDialog;
    els.openProfile.addEventListener('click', () => {
      if (!this.state) return;
      const me = this.state.me;
      els.profileUsername.textContent = `Signed in as ${me.username}`;
      els.displayName.value = me.display_name || me.username;
      // For password managers: the account whose password is being changed.
      els.passwordUsername.value = me.username;
      for (const id of ['nameError', 'nameResult', 'passwordError']) setMessage(els[id], '');
      els.passwordForm.reset();
      dialog.showModal();
      els.displayName.focus();
    });
    els.profileClose.addEventListener('click', () => dialog.close());
    els.nameForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      setMessage(els.nameError, '');
      setMessage(els.nameResult, '');
      const name = els.displayName.value.trim();
      const problem = displayNameProblem(name);
      if (problem) {
        setMessage(els.nameError, problem);
        return;
      }
      this.ui.busy(els.nameForm, true);
      try {
        const user = await this.api.updateMe(this.session.token, { display_name: name });
        this.session.user = user;
        this.saveSession();
        this.state.me = { ...this.state.me, display_name: user.display_name };
        this.ui.renderMe(this.state.me);
        setMessage(els.nameResult, 'Saved.');
      } catch (err) {
        setMessage(els.nameError, describeApiError(err, 'profile'));
      } finally {
        this.ui.busy(els.nameForm, false);
      }
    });
    els.passwordForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      setMessage(els.passwordError, '');
      const current = els.currentPassword.value;
      const next = els.newPassword.value;
      if (!current || !next) {
        setMessage(els.passwordError, 'Enter your current and your new password.');
        return;
      }
      if (next !== els.confirmPassword.value) {
        setMessage(els.passwordError, 'The new passwords do not match.');
        els.confirmPassword.focus();
        return;
      }
      const username = this.state.me.username;
      this.ui.busy(els.passwordForm, true);
      this.changingPassword = true;
      try {
        await this.api.updateMe(this.session.token, { current_password: current, new_password: next });
      } catch (err) {
        this.changingPassword = false;
        this.ui.busy(els.passwordForm, false);
        setMessage(els.passwordError, describeApiError(err, 'profile'));
        return;
      }
      // Every earlier token is void now and the socket is being closed (4003):
      // log in again with the new password and reconnect.
      try {
        const session = await this.api.login(username, next);
        this.session = { ...session };
        this.saveSession();
        this.changingPassword = false;
        dialog.close();
        els.passwordForm.reset();
        this.socket.restart();
        this.ui.toast('Password changed', 'Other sessions have been logged out.');
      } catch {
        this.endChat('Your password was changed. Please log in with the new password.');
      } finally {
        this.ui.busy(els.passwordForm, false);
      }
    });
  }
}
