// Rendering: turns the ChatState and the connection status into DOM. Every string
// that comes from a user or the server goes in through textContent (see dom.mjs).
// User actions are reported through the `actions` callbacks given to the constructor.

import { byId, el, setMessage } from './dom.mjs';
import { clockTime, continuesRun, dayLabel, dayStart, hueIndex } from './logic.mjs';

/** Distance from the bottom (px) within which the message list counts as "at the bottom". */
const STICK_PX = 48;
/** Distance from the top (px) at which older history is fetched. */
const OLDER_PX = 120;
/** How long a toast stays up (ms). */
const TOAST_MS = 6000;
/** Widest screen (px) on which the side panels are drawers (matches app.css). */
const DRAWER_MAX_PX = 1100;

const IDS = [
  'auth-view', 'chat-view', 'tab-login', 'tab-register', 'login-form', 'register-form',
  'login-username', 'login-password', 'login-error', 'register-username', 'register-password',
  'register-error', 'auth-notice', 'toggle-sidebar', 'toggle-aside', 'aside-badge', 'conn-status',
  'conn-status-text', 'open-profile', 'me-avatar', 'me-name', 'logout', 'conn-banner',
  'conn-banner-text', 'conn-banner-action', 'sidebar', 'room-list', 'join-form', 'join-room',
  'join-error', 'directory-title', 'directory-list', 'dm-list', 'dm-form', 'dm-user', 'dm-error',
  'conn-announce', 'conv-title', 'conv-subtitle', 'leave-room', 'close-thread', 'messages', 'history-status',
  'message-list', 'jump-latest', 'composer', 'composer-text', 'composer-send', 'composer-error',
  'aside', 'tab-people', 'tab-notifications', 'notification-badge', 'panel-people',
  'panel-notifications', 'member-count', 'member-list', 'online-count', 'online-list',
  'publish-form', 'publish-text', 'publish-result', 'subscription-list', 'subscribe-form',
  'subscribe-user', 'subscribe-error', 'notification-list', 'notification-empty', 'scrim',
  'toasts', 'profile-dialog', 'profile-close', 'profile-logout', 'profile-username', 'name-form', 'display-name',
  'name-error', 'name-result', 'password-form', 'current-password', 'new-password',
  'confirm-password', 'password-error', 'password-username',
];

function camel(id) {
  return id.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

export class Ui {
  constructor(actions) {
    this.actions = actions;
    this.els = {};
    for (const id of IDS) this.els[camel(id)] = byId(id);
    /** Which conversation the message list shows, and the ids in it, in order. */
    this.renderedKey = null;
    this.renderedIds = [];
    this.lastRendered = null;
    this.statusTimer = null;
    this.setupTabs([this.els.tabLogin, this.els.tabRegister], (tab) => {
      this.clearAuthErrors();
      (tab === this.els.tabLogin ? this.els.loginUsername : this.els.registerUsername).focus();
    });
    this.setupTabs([this.els.tabPeople, this.els.tabNotifications], (tab) => {
      if (tab === this.els.tabNotifications) this.actions.notificationsSeen();
    });
    this.setupDrawers();
    this.setupMessageList();
  }

  // ---- views -----------------------------------------------------------------------

  showAuth({ notice = '', tab = 'login' } = {}) {
    this.els.chatView.hidden = true;
    this.els.authView.hidden = false;
    if (this.els.profileDialog.open) this.els.profileDialog.close();
    setMessage(this.els.authNotice, notice);
    this.selectTab(tab === 'register' ? this.els.tabRegister : this.els.tabLogin);
    this.clearAuthErrors();
    this.els.loginPassword.value = '';
    this.els.registerPassword.value = '';
    document.title = 'chatd';
    const first = tab === 'register' ? this.els.registerUsername : this.els.loginUsername;
    (first.value ? (tab === 'register' ? this.els.registerPassword : this.els.loginPassword) : first).focus();
  }

  showChat(me) {
    this.els.authView.hidden = true;
    this.els.chatView.hidden = false;
    setMessage(this.els.authNotice, '');
    this.renderMe(me);
    this.renderedKey = null;
    this.renderedIds = [];
    this.els.messageList.replaceChildren();
    this.els.notificationList.replaceChildren();
    this.els.publishResult.textContent = '';
    this.els.composerText.focus();
  }

  renderMe(me) {
    this.els.meName.textContent = me.display_name && me.display_name !== me.username
      ? `${me.display_name} (${me.username})`
      : me.username;
    this.els.meAvatar.textContent = initial(me.display_name || me.username);
    this.els.meAvatar.className = `avatar avatar-sm hue-${hueIndex(me.username)}`;
    this.els.openProfile.setAttribute('aria-label', `Profile of ${me.username}`);
  }

  clearAuthErrors() {
    setMessage(this.els.loginError, '');
    setMessage(this.els.registerError, '');
  }

  /** Disables a form's submit button while its request is in flight. */
  busy(form, on) {
    for (const b of form.querySelectorAll('button[type=submit]')) b.disabled = on;
    form.setAttribute('aria-busy', on ? 'true' : 'false');
  }

  // ---- tabs and drawers ------------------------------------------------------------

  /** Accessible tabs: click or arrow keys select; only the selected tab is in the tab order. */
  setupTabs(tabs, onSelect) {
    for (const tab of tabs) {
      tab.tabs = tabs;
      tab.addEventListener('click', () => {
        this.selectTab(tab);
        onSelect(tab);
      });
      tab.addEventListener('keydown', (ev) => {
        if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
        const i = tabs.indexOf(tab);
        const next = tabs[(i + (ev.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
        this.selectTab(next);
        next.focus();
        onSelect(next);
      });
    }
  }

  selectTab(tab) {
    for (const t of tab.tabs) {
      const selected = t === tab;
      t.setAttribute('aria-selected', String(selected));
      t.tabIndex = selected ? 0 : -1;
      byId(t.getAttribute('aria-controls')).hidden = !selected;
    }
  }

  get notificationsVisible() {
    return this.els.tabNotifications.getAttribute('aria-selected') === 'true' && this.asideVisible;
  }

  get asideVisible() {
    return window.innerWidth > DRAWER_MAX_PX || this.els.aside.classList.contains('open');
  }

  showNotificationsTab() {
    this.selectTab(this.els.tabNotifications);
    this.actions.notificationsSeen();
  }

  setupDrawers() {
    const toggle = (drawer, button) => {
      const open = !drawer.classList.contains('open');
      this.closeDrawers();
      if (open) {
        drawer.classList.add('open');
        button.setAttribute('aria-expanded', 'true');
        this.els.scrim.hidden = false;
        const focusable = drawer.querySelector('button, input, textarea, [tabindex="0"]');
        if (focusable) focusable.focus();
        if (drawer === this.els.aside && this.notificationsVisible) this.actions.notificationsSeen();
      }
    };
    this.els.toggleSidebar.addEventListener('click', () => toggle(this.els.sidebar, this.els.toggleSidebar));
    this.els.toggleAside.addEventListener('click', () => toggle(this.els.aside, this.els.toggleAside));
    this.els.scrim.addEventListener('click', () => this.closeDrawers());
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && !this.els.scrim.hidden) {
        const opener = this.els.sidebar.classList.contains('open') ? this.els.toggleSidebar : this.els.toggleAside;
        this.closeDrawers();
        opener.focus();
      }
    });
  }

  closeDrawers() {
    for (const [drawer, button] of [[this.els.sidebar, this.els.toggleSidebar], [this.els.aside, this.els.toggleAside]]) {
      drawer.classList.remove('open');
      button.setAttribute('aria-expanded', 'false');
    }
    this.els.scrim.hidden = true;
  }

  // ---- connection status -----------------------------------------------------------

  /** The status pill, and the banner explaining a drop while disconnected. */
  renderStatus(status, { connectedOnce }) {
    const { state, retryAt, lastClose } = status;
    const node = this.els.connStatus;
    node.dataset.state = state;
    node.dataset.connects = String(status.connects);
    node.dataset.retryAt = retryAt ? String(retryAt) : '';
    clearInterval(this.statusTimer);
    this.statusTimer = null;
    const paint = () => {
      let text;
      if (state === 'open') text = 'Connected';
      else if (state === 'connecting') text = connectedOnce ? 'Reconnecting…' : 'Connecting…';
      else if (state === 'waiting') {
        const secs = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
        text = secs > 0 ? `Reconnecting in ${secs} s` : 'Reconnecting…';
      } else text = 'Disconnected';
      this.els.connStatusText.textContent = text;
      node.title = lastClose && state !== 'open' ? lastClose.text : '';
    };
    paint();
    if (state === 'waiting') this.statusTimer = setInterval(paint, 1000);
    // Screen readers hear about state changes, not every tick of the countdown.
    const spoken = { open: 'Connected', waiting: 'Connection lost, reconnecting', stopped: 'Disconnected' }[state];
    if (spoken && this.spokenState !== state) this.els.connAnnounce.textContent = spoken;
    this.spokenState = state;
    if (state === 'open') this.hideBanner();
    else if ((state === 'waiting' || state === 'connecting') && lastClose && lastClose.refused) {
      // Another session holds the connection: said even if this page never connected.
      this.showBanner(lastClose.text, state === 'waiting'
        ? { label: 'Try now', run: () => this.actions.reconnectNow() }
        : null);
    } else if ((state === 'waiting' || state === 'connecting') && lastClose && connectedOnce) {
      this.showBanner(`${lastClose.text} Reconnecting…`, state === 'waiting'
        ? { label: 'Reconnect now', run: () => this.actions.reconnectNow() }
        : null);
    }
    const offline = state !== 'open';
    this.els.composerSend.disabled = offline;
    this.els.composer.classList.toggle('offline', offline);
  }

  showBanner(text, action = null) {
    this.els.connBannerText.textContent = text;
    const button = this.els.connBannerAction;
    button.hidden = !action;
    button.onclick = action ? action.run : null;
    if (action) button.textContent = action.label;
    this.els.connBanner.hidden = false;
  }

  hideBanner() {
    this.els.connBanner.hidden = true;
  }

  // ---- sidebar: rooms, directory, direct messages ----------------------------------

  renderSidebar(state) {
    const rooms = state.joinedRooms();
    this.els.roomList.replaceChildren(...rooms.map((c) => this.convItem(state, c, `# ${c.name}`, c.members.size)));
    const joined = new Set(rooms.map((c) => c.name));
    const others = state.directory.filter((r) => !joined.has(r.name));
    this.els.directoryTitle.hidden = others.length === 0;
    this.els.directoryList.replaceChildren(...others.map((r) => el('li', {},
      el('button', {
        type: 'button',
        class: 'conv-item',
        'aria-label': `Join room ${r.name}, ${plural(r.members, 'member')}`,
        onclick: () => this.actions.joinRoom(r.name),
      },
      el('span', { class: 'conv-name', text: `# ${r.name}` }),
      el('span', { class: 'conv-count', text: String(r.members), title: plural(r.members, 'member') }),
      el('span', { class: 'conv-join', text: 'Join', 'aria-hidden': 'true' })))));
    const threads = state.directThreads();
    this.els.dmList.replaceChildren(...threads.map((c) => this.convItem(state, c, c.name, null)));
    const unread = state.totalUnread();
    document.title = unread > 0 ? `(${unread}) chatd` : 'chatd';
    const toggleUnread = rooms.concat(threads).some((c) => c.unread > 0 && c.key !== state.current);
    this.els.toggleSidebar.classList.toggle('has-unread', toggleUnread);
  }

  convItem(state, c, label, members) {
    const current = c.key === state.current;
    const parts = [];
    if (c.kind === 'dm') {
      parts.push(el('span', { class: `avatar avatar-xs hue-${hueIndex(c.name)}`, 'aria-hidden': 'true', text: initial(c.name) }));
    }
    parts.push(el('span', { class: 'conv-name', text: label }));
    let aria = c.kind === 'room' ? `Room ${c.name}` : `Direct messages with ${c.name}`;
    if (members !== null) {
      parts.push(el('span', { class: 'conv-count', text: String(members), title: plural(members, 'member') }));
      aria += `, ${plural(members, 'member')}`;
    }
    if (c.unread > 0 && !current) {
      parts.push(el('span', { class: 'badge', text: c.unread > 99 ? '99+' : String(c.unread) }));
      aria += `, ${c.unread} unread`;
    }
    return el('li', { dataset: { key: c.key } }, el('button', {
      type: 'button',
      class: `conv-item${current ? ' current' : ''}${c.unread > 0 && !current ? ' unread' : ''}`,
      'aria-current': current ? 'true' : false,
      'aria-label': aria,
      onclick: () => this.actions.open(c.key),
    }, ...parts));
  }

  // ---- the conversation ------------------------------------------------------------

  renderHeader(state) {
    const c = state.currentConversation;
    if (!c) {
      this.els.convTitle.textContent = 'No conversation';
      this.els.convSubtitle.textContent = 'Join a room or message someone to start.';
      this.els.leaveRoom.hidden = true;
      this.els.closeThread.hidden = true;
      this.els.composerText.placeholder = 'Message';
      this.els.composerText.disabled = true;
      return;
    }
    this.els.composerText.disabled = false;
    if (c.kind === 'room') {
      this.els.convTitle.textContent = `# ${c.name}`;
      this.els.convSubtitle.textContent = plural(c.members.size, 'member');
      this.els.leaveRoom.hidden = false;
      this.els.closeThread.hidden = true;
      this.els.composerText.placeholder = `Message #${c.name}`;
    } else {
      this.els.convTitle.textContent = c.name;
      this.els.convSubtitle.textContent = state.online.includes(c.name) ? 'Direct messages · online' : 'Direct messages';
      this.els.leaveRoom.hidden = true;
      this.els.closeThread.hidden = false;
      this.els.composerText.placeholder = `Message ${c.name}`;
    }
  }

  /** Whether the message list is scrolled to (near) the bottom. */
  atBottom() {
    const box = this.els.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < STICK_PX;
  }

  scrollToBottom() {
    const box = this.els.messages;
    box.scrollTop = box.scrollHeight;
    this.els.jumpLatest.hidden = true;
  }

  /**
   * Shows the conversation's messages. New messages at the end are appended (the view
   * stays at the bottom if it was there); older ones at the start keep the scroll
   * position; anything else redraws.
   */
  renderMessages(state, { loadingOlder = false, loadingLatest = false } = {}) {
    const c = state.currentConversation;
    const box = this.els.messages;
    const list = this.els.messageList;
    const messages = c ? c.messages : [];
    const same = c && this.renderedKey === c.key;
    const wasAtBottom = !same || this.atBottom();
    const ids = this.renderedIds;
    const n = ids.length;
    const now = Date.now();
    const me = state.me.username;

    if (same && n > 0 && messages.length >= n && messages[0].id === ids[0] && messages[n - 1].id === ids[n - 1]) {
      // Appended at the end (or nothing new).
      for (let i = n; i < messages.length; i += 1) {
        const prev = i > 0 ? messages[i - 1] : null;
        this.appendMessage(list, prev, messages[i], now, me);
      }
      if (messages.length > n) {
        if (wasAtBottom) this.scrollToBottom();
        else this.els.jumpLatest.hidden = false;
      }
    } else if (same && n > 0 && messages.length > n && messages[messages.length - 1].id === ids[n - 1]) {
      // Older messages at the start: keep what the user is looking at in place.
      const fromBottom = box.scrollHeight - box.scrollTop;
      this.redraw(list, messages, now, me);
      box.scrollTop = box.scrollHeight - fromBottom;
    } else {
      this.redraw(list, messages, now, me);
      if (wasAtBottom) this.scrollToBottom();
    }
    this.renderedKey = c ? c.key : null;
    this.renderedIds = messages.map((m) => m.id);

    let status = '';
    if (!c) status = '';
    else if (loadingOlder || loadingLatest) status = loadingLatest ? 'Loading messages…' : 'Loading older messages…';
    else if (c.loaded && !c.more) {
      status = c.kind === 'room' ? `This is the beginning of #${c.name}.` : `This is the beginning of your conversation with ${c.name}.`;
    }
    this.els.historyStatus.textContent = status;
  }

  /** Rebuilds the list. Silent for screen readers: only appended messages are announced. */
  redraw(list, messages, now, me) {
    const box = this.els.messages;
    box.setAttribute('aria-live', 'off');
    list.replaceChildren();
    let prev = null;
    for (const m of messages) {
      this.appendMessage(list, prev, m, now, me);
      prev = m;
    }
    setTimeout(() => box.setAttribute('aria-live', 'polite'), 0);
  }

  appendMessage(list, prev, m, now, me) {
    if (!prev || dayStart(prev.ts) !== dayStart(m.ts)) {
      list.append(el('li', { class: 'day-divider', role: 'separator' }, el('span', { text: dayLabel(m.ts, now) })));
    }
    const cont = continuesRun(prev, m);
    const date = new Date(m.ts);
    const time = el('time', { datetime: date.toISOString(), title: date.toLocaleString(), text: clockTime(m.ts) });
    const own = m.from === me;
    const item = el('li', {
      class: `message${cont ? ' continued' : ''}${own ? ' own' : ''}`,
      dataset: { id: String(m.id), from: m.from },
    });
    if (cont) {
      item.append(el('span', { class: 'message-gutter' }, time));
    } else {
      item.append(el('span', { class: `avatar hue-${hueIndex(m.from)}`, 'aria-hidden': 'true', text: initial(m.from) }));
    }
    const body = el('div', { class: 'message-body' });
    if (!cont) {
      body.append(el('div', { class: 'message-meta' },
        el('span', { class: 'message-from', text: m.from }),
        own ? el('span', { class: 'message-you', text: 'you' }) : null,
        time));
    }
    body.append(el('p', { class: 'message-text', text: m.text }));
    item.append(body);
    list.append(item);
  }

  setupMessageList() {
    const box = this.els.messages;
    box.addEventListener('scroll', () => {
      if (this.atBottom()) this.els.jumpLatest.hidden = true;
      if (box.scrollTop < OLDER_PX) this.actions.nearTop();
    }, { passive: true });
    this.els.jumpLatest.addEventListener('click', () => {
      this.scrollToBottom();
      this.els.composerText.focus();
    });
  }

  /** Whether the list is too short to scroll (older history should then be fetched). */
  listNotFull() {
    const box = this.els.messages;
    return box.scrollHeight <= box.clientHeight + OLDER_PX;
  }

  // ---- people ----------------------------------------------------------------------

  renderPeople(state) {
    const c = state.currentConversation;
    const me = state.me.username;
    const members = c && c.kind === 'room' ? [...c.members].sort(byName) : [];
    this.els.memberCount.textContent = c && c.kind === 'room' ? String(members.length) : '';
    this.els.memberList.replaceChildren(...(c && c.kind === 'room'
      ? members.map((u) => this.personItem(state, u, me))
      : [el('li', { class: 'empty', text: 'Members are shown for rooms.' })]));
    const online = [...state.online].sort(byName);
    this.els.onlineCount.textContent = String(online.length);
    this.els.onlineList.replaceChildren(...online.map((u) => this.personItem(state, u, me)));
  }

  personItem(state, user, me) {
    const self = user === me;
    const subscribed = state.subscriptions.has(user);
    return el('li', { class: 'person', dataset: { user } },
      el('span', { class: `avatar avatar-sm hue-${hueIndex(user)}`, 'aria-hidden': 'true', text: initial(user) }),
      el('span', { class: 'person-name', text: user }),
      self ? el('span', { class: 'person-you', text: 'you' }) : null,
      self ? null : el('span', { class: 'person-actions' },
        el('button', {
          type: 'button',
          class: 'btn btn-tiny',
          'aria-label': `Message ${user}`,
          title: `Message ${user}`,
          text: 'Message',
          onclick: () => this.actions.openThread(user),
        }),
        el('button', {
          type: 'button',
          class: `btn btn-tiny${subscribed ? ' active' : ''}`,
          'aria-pressed': String(subscribed),
          'aria-label': `${subscribed ? 'Unsubscribe from' : 'Subscribe to'} ${user}`,
          title: subscribed ? `Unsubscribe from ${user}` : `Subscribe to ${user}`,
          text: subscribed ? 'Subscribed' : 'Subscribe',
          onclick: () => (subscribed ? this.actions.unsubscribe(user) : this.actions.subscribe(user)),
        })));
  }

  // ---- notifications ---------------------------------------------------------------

  renderNotifications(state) {
    this.els.subscriptionList.replaceChildren(...[...state.subscriptions].sort(byName).map((u) => el('li', { class: 'person', dataset: { user: u } },
      el('span', { class: `avatar avatar-sm hue-${hueIndex(u)}`, 'aria-hidden': 'true', text: initial(u) }),
      el('span', { class: 'person-name', text: u }),
      el('span', { class: 'person-actions' }, el('button', {
        type: 'button',
        class: 'btn btn-tiny',
        'aria-label': `Unsubscribe from ${u}`,
        text: 'Unsubscribe',
        onclick: () => this.actions.unsubscribe(u),
      })))));
    if (state.subscriptions.size === 0) {
      this.els.subscriptionList.append(el('li', { class: 'empty', text: 'You are not subscribed to anyone.' }));
    }
    const now = Date.now();
    this.els.notificationList.replaceChildren(...state.notifications.map((n) => el('li', { class: 'notification', dataset: { id: String(n.id) } },
      el('div', { class: 'notification-meta' },
        el('span', { class: 'notification-from', text: n.from }),
        el('time', { datetime: new Date(n.ts).toISOString(), text: dayStart(n.ts) === dayStart(now) ? clockTime(n.ts) : `${dayLabel(n.ts, now)} ${clockTime(n.ts)}` })),
      el('p', { class: 'notification-text', text: n.text }))));
    this.els.notificationEmpty.hidden = state.notifications.length > 0;
    const unseen = state.unseenNotifications;
    for (const badge of [this.els.notificationBadge, this.els.asideBadge]) {
      badge.hidden = unseen === 0;
      badge.textContent = unseen > 99 ? '99+' : String(unseen);
    }
  }

  /** A short-lived popup in the corner (notifications, confirmations). */
  toast(title, text, { kind = 'info' } = {}) {
    const close = el('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', text: '×' });
    const node = el('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
      el('div', { class: 'toast-body' },
        el('strong', { class: 'toast-title', text: title }),
        text ? el('p', { class: 'toast-text', text }) : null),
      close);
    const remove = () => node.remove();
    close.addEventListener('click', remove);
    this.els.toasts.append(node);
    while (this.els.toasts.children.length > 4) this.els.toasts.firstElementChild.remove();
    setTimeout(remove, TOAST_MS);
  }
}

function initial(name) {
  const first = [...String(name || '?')][0] || '?';
  return first.toUpperCase();
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function byName(a, b) {
  return a.localeCompare(b);
}

