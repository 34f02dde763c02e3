// Debian's Chromium, headless, driven by playwright-core (which never downloads a
// browser), and helpers to work the chatd page the way a user does.

import { chromium } from 'playwright-core';

export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

/** Default bound of every wait on a page. */
export const WAIT_MS = 10_000;

export function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-quic',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
}

/** The API paths of chatd (fetched by the page, or the WebSocket), as opposed to its files. */
const API_PATHS = new Set(['/login', '/register', '/refresh', '/me', '/ws']);

/**
 * Failed API requests that the page expects and explains in words: an API answer's
 * status by path, or no answer at all (any API path) while chatd is down in the restart
 * tests. Anything else, and any failure of the page's own files, is an error.
 */
const EXPECTED_API_STATUS = {
  '/login': [401, 429], // wrong credentials, rate limited
  '/register': [400, 409, 429], // weak password or bad name, name taken, rate limited
  '/me': [401, 403], // a token checked after a refused handshake; wrong current password
  '/refresh': [401], // a token void after a password change elsewhere
};

/**
 * A fresh browser profile (cookies, storage) with a page on chatd. The page records
 * dialogs (dismissed at once), console errors (with the URL they concern), uncaught
 * errors, and the status of every file of chatd's own it loads.
 */
export async function openPage(browser, baseUrl, { viewport = { width: 1280, height: 800 }, context = null } = {}) {
  const ctx = context || (await browser.newContext({ ignoreHTTPSErrors: true, viewport, locale: 'en-GB', timezoneId: 'UTC' }));
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const origin = new URL(baseUrl).origin;
  const seen = { dialogs: [], consoleErrors: [], consoleErrorUrls: [], pageErrors: [], files: [] };
  page.on('dialog', (dialog) => {
    seen.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    seen.consoleErrors.push(msg.text());
    seen.consoleErrorUrls.push(msg.location().url || '');
  });
  page.on('pageerror', (err) => seen.pageErrors.push(String(err)));
  // The page's own files (HTML, CSS, modules, icons), as opposed to API calls.
  const ownFile = (url) => {
    const u = new URL(url);
    return u.origin === origin && !API_PATHS.has(u.pathname);
  };
  page.on('response', (res) => {
    if (ownFile(res.url())) seen.files.push({ url: res.url(), status: res.status() });
  });
  page.on('requestfailed', (req) => {
    if (ownFile(req.url())) seen.files.push({ url: req.url(), status: 0, error: req.failure()?.errorText || 'failed' });
  });
  await page.goto(baseUrl);
  return { ctx, page, seen };
}

/**
 * Console errors that are not the expected noise of a dropped WebSocket or of an API
 * answer the page explains in words (see EXPECTED_API_STATUS).
 */
export function unexpectedErrors(seen) {
  return seen.consoleErrors
    .filter((text, i) => !expectedConsoleError(text, seen.consoleErrorUrls[i]))
    .concat(seen.pageErrors);
}

function expectedConsoleError(text, url) {
  if (/^WebSocket connection to .* failed/.test(text)) return true;
  const m = /^Failed to load resource: (?:the server responded with a status of (\d+)|(net::ERR_\w+))/.exec(text);
  if (!m || !url) return false;
  const path = new URL(url).pathname;
  if (!API_PATHS.has(path)) return false; // a file of the page itself: never expected
  if (m[2]) return true; // no answer: chatd is down (restart tests)
  return (EXPECTED_API_STATUS[path] || []).includes(Number(m[1]));
}

/** Files of chatd's own that did not load with 200 (or 304 from the cache's check). */
export function failedFiles(seen) {
  return seen.files.filter((f) => f.status !== 200 && f.status !== 304);
}

export function cspViolations(seen) {
  return seen.consoleErrors.filter((text) => /Content Security Policy/i.test(text));
}

/** Polls `fn` (async) until it returns a truthy value; throws with `what` after `timeout`. */
export async function waitUntil(fn, what, timeout = WAIT_MS) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function register(page, username, password) {
  await page.click('#tab-register');
  await page.fill('#register-username', username);
  await page.fill('#register-password', password);
  await page.click('#register-form button[type=submit]');
}

export async function login(page, username, password) {
  await page.click('#tab-login');
  await page.fill('#login-username', username);
  await page.fill('#login-password', password);
  await page.press('#login-password', 'Enter');
}

export async function waitConnected(page, timeout = WAIT_MS) {
  await page.locator('#conn-status[data-state=open]').waitFor({ timeout });
}

/** The connection state and counters the status element exposes. */
export async function connection(page) {
  return page.locator('#conn-status').evaluate((node) => ({
    state: node.dataset.state,
    connects: Number(node.dataset.connects || 0),
    retryAt: Number(node.dataset.retryAt || 0),
    text: node.textContent.trim(),
  }));
}

/** Types a message in the composer and sends it with Enter. */
export async function send(page, text) {
  await page.fill('#composer-text', text);
  await page.press('#composer-text', 'Enter');
}

/** The visible conversation's messages: [{ id, from, text }], in display order. */
export async function messages(page) {
  return page.locator('#message-list .message').evaluateAll((items) => items.map((li) => ({
    id: Number(li.dataset.id),
    from: li.dataset.from,
    text: li.querySelector('.message-text').textContent,
  })));
}

/** Waits until the visible conversation shows a message with exactly this text. */
export async function waitForMessage(page, text, timeout = WAIT_MS) {
  return waitUntil(async () => (await messages(page)).find((m) => m.text === text), `message ${JSON.stringify(text)}`, timeout);
}

/** Fails unless the visible conversation shows every message once, oldest first. */
export async function assertInOrderOnce(page) {
  const list = await messages(page);
  const ids = list.map((m) => m.id);
  for (let i = 1; i < ids.length; i += 1) {
    if (!(ids[i - 1] < ids[i])) throw new Error(`messages out of order or repeated: ${ids.join(', ')}`);
  }
  return list;
}

export async function memberNames(page) {
  return page.locator('#member-list .person').evaluateAll((items) => items.map((li) => li.dataset.user));
}

export async function openConversation(page, key) {
  const drawer = page.locator('#toggle-sidebar');
  if (await drawer.isVisible()) await drawer.click();
  await page.click(`#sidebar li[data-key="${key}"] button`);
  await page.locator(`#sidebar li[data-key="${key}"] button[aria-current=true]`).waitFor();
}

/** The unread badge of a conversation in the sidebar ('' when none). */
export async function unreadBadge(page, key) {
  const badge = page.locator(`#sidebar li[data-key="${key}"] .badge`);
  return (await badge.count()) ? (await badge.textContent()).trim() : '';
}

export async function sessionToken(page) {
  return page.evaluate(() => {
    const s = JSON.parse(window.sessionStorage.getItem('chatd.session') || 'null');
    return s && s.token;
  });
}
