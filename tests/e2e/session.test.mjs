// End-to-end: the session around the chat. Short-lived tokens are renewed without a
// reconnect, a second tab replaces the first (4001), a password change logs the page in
// again, and the login rate limit is explained in plain words.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  connection,
  cspViolations,
  failedFiles,
  launchBrowser,
  login,
  openPage,
  register,
  send,
  sessionToken,
  unexpectedErrors,
  waitConnected,
  waitForMessage,
  waitUntil,
} from './lib/browser.mjs';
import { removeDir, startChatd } from './lib/chatd.mjs';
import { apiCall, registerUser } from './lib/net.mjs';

/** Token lifetime on the test server: the page must renew every few seconds. */
const TTL_SECS = 6;

describe('session: token renewal, tabs, password change', { timeout: 120_000 }, () => {
  let server;
  let browser;
  let first;

  before(async () => {
    server = await startChatd({ config: { jwt_ttl_secs: String(TTL_SECS), duplicate_sessions: 'replace' } });
    browser = await launchBrowser();
    first = await openPage(browser, server.url);
  });

  after(async () => {
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('keeps one connection alive across several token lifetimes', async () => {
    const { page } = first;
    await register(page, 'dave', 'dave-password-1');
    await waitConnected(page);
    const token = await sessionToken(page);
    await send(page, 'before the wait');
    await waitForMessage(page, 'before the wait');
    // Without renewal the server closes the socket with 4002 once the token expires.
    await page.waitForTimeout(TTL_SECS * 2000 + 1000);
    const c = await connection(page);
    assert.equal(c.state, 'open');
    assert.equal(c.connects, 1, 'never reconnected');
    assert.notEqual(await sessionToken(page), token, 'the token was renewed');
    await send(page, 'after the wait');
    await waitForMessage(page, 'after the wait');
  });

  it('explains being replaced by another tab and can take over again', async () => {
    const second = await openPage(browser, server.url, { context: first.ctx });
    await login(second.page, 'dave', 'dave-password-1');
    await waitConnected(second.page);
    await first.page.locator('#conn-banner', { hasText: 'The chat was opened in another tab or window.' }).waitFor();
    assert.equal((await connection(first.page)).state, 'stopped');
    // The first page stays put rather than fighting the second one, and keeps its
    // token fresh for longer than a token lives, so it can take over without a login.
    await second.page.waitForTimeout(TTL_SECS * 1000 + 1000);
    assert.equal((await connection(second.page)).state, 'open');
    assert.equal((await connection(second.page)).connects, 1);

    await first.page.click('#conn-banner-action');
    await waitConnected(first.page);
    await second.page.locator('#conn-banner', { hasText: 'another tab' }).waitFor();
    await second.page.close();
  });

  it('changes the display name', async () => {
    const { page } = first;
    await page.click('#open-profile');
    await page.fill('#display-name', 'Dave D.');
    await page.click('#name-form button[type=submit]');
    await page.locator('#name-result', { hasText: 'Saved.' }).waitFor();
    assert.equal(await page.locator('#me-name').textContent(), 'Dave D. (dave)');
    // Counted as the server counts: 64 emoji are 64 characters, not 128 UTF-16 units.
    const emoji = '😀'.repeat(64);
    await page.fill('#display-name', emoji);
    await page.click('#name-form button[type=submit]');
    await page.locator('#name-result', { hasText: 'Saved.' }).waitFor();
    assert.equal(await page.locator('#me-name').textContent(), `${emoji} (dave)`);
    await page.fill('#display-name', 'ad\u200Bmin');
    await page.click('#name-form button[type=submit]');
    await page.locator('#name-error', { hasText: 'invisible formatting' }).waitFor();
    await page.fill('#display-name', 'Dave D.');
    await page.click('#name-form button[type=submit]');
    await page.locator('#name-result', { hasText: 'Saved.' }).waitFor();
    await page.click('#profile-close');
  });

  it('changes the password and logs in again by itself', async () => {
    const { page } = first;
    await page.click('#open-profile');
    await page.fill('#current-password', 'not-the-password');
    await page.fill('#new-password', 'dave-password-2');
    await page.fill('#confirm-password', 'dave-password-2');
    await page.click('#password-form button[type=submit]');
    await page.locator('#password-error', { hasText: 'The current password is wrong.' }).waitFor();

    const { connects } = await connection(page);
    const token = await sessionToken(page);
    await page.fill('#current-password', 'dave-password-1');
    await page.click('#password-form button[type=submit]');
    await page.locator('.toast', { hasText: 'Password changed' }).waitFor();
    await waitConnected(page);
    assert.ok(!(await page.locator('#profile-dialog').isVisible()));
    assert.ok((await connection(page)).connects > connects, 'reconnected with the new token');
    assert.notEqual(await sessionToken(page), token);
    assert.equal((await apiCall(server.url, 'GET', '/me', { token })).status, 401, 'the old token is void');
    assert.equal((await apiCall(server.url, 'POST', '/login', { body: { username: 'dave', password: 'dave-password-2' } })).status, 200);
    await send(page, 'after the password change');
    await waitForMessage(page, 'after the password change');
  });

  it('sends another session back to the login screen when the password changes elsewhere', async () => {
    const { page } = first;
    const r = await apiCall(server.url, 'POST', '/login', { body: { username: 'dave', password: 'dave-password-2' } });
    const change = await apiCall(server.url, 'PUT', '/me', {
      token: r.body.token,
      body: { current_password: 'dave-password-2', new_password: 'dave-password-3' },
    });
    assert.equal(change.status, 200);
    await page.locator('#auth-notice', { hasText: 'Your password was changed. Please log in again.' }).waitFor();
    assert.equal(await sessionToken(page), null);
    await login(page, 'dave', 'dave-password-3');
    await waitConnected(page);
  });

  it('ran without CSP violations or page errors', () => {
    assert.deepEqual(cspViolations(first.seen), []);
    assert.deepEqual(unexpectedErrors(first.seen), []);
    assert.deepEqual(failedFiles(first.seen), []);
  });
});

describe('one session at a time (duplicate_sessions = reject)', { timeout: 90_000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await startChatd({ config: { duplicate_sessions: 'reject' } });
    await registerUser(server.url, 'gina', 'gina-password-1');
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('says that another session holds the connection, waits, and connects once it closes', async () => {
    const one = await openPage(browser, server.url);
    await login(one.page, 'gina', 'gina-password-1');
    await waitConnected(one.page);

    const two = await openPage(browser, server.url);
    const handshakes = [];
    two.page.on('websocket', () => handshakes.push(Date.now()));
    await login(two.page, 'gina', 'gina-password-1');
    await two.page.locator('#conn-banner', { hasText: 'The chat is open in another tab, window or device, and this server allows only one at a time.' }).waitFor();
    assert.notEqual((await connection(two.page)).state, 'open');
    assert.ok(!(await two.page.locator('#conn-banner').textContent()).includes('connection to the server was lost'));
    // It backs off instead of retrying twice a second: at most one attempt in 4 s (a
    // slow machine makes fewer), and the wait it schedules after a refused attempt is
    // long (8-16 s; the exact range is a unit test of the page's socket), measured from
    // that attempt rather than from whenever this test looks.
    const counted = handshakes.length;
    await two.page.waitForTimeout(4000);
    assert.ok(handshakes.length <= counted + 1, `${handshakes.length - counted} attempts in 4 s`);
    const waiting = await waitUntil(async () => {
      const c = await connection(two.page);
      return c.state === 'waiting' && c.retryAt > handshakes.at(-1) ? c : null;
    }, 'the next attempt scheduled');
    assert.ok(waiting.retryAt - handshakes.at(-1) >= 4000, `the next attempt ${waiting.retryAt - handshakes.at(-1)} ms after the last`);
    assert.equal((await connection(one.page)).state, 'open', 'the first page keeps its connection');

    // The first page goes: the second gets in (asked to try now rather than waiting).
    await one.page.click('#logout');
    await one.page.locator('#auth-view').waitFor();
    await two.page.click('#conn-banner-action');
    await waitConnected(two.page);
    assert.ok(await two.page.locator('#conn-banner').isHidden());
    await send(two.page, 'my turn');
    await waitForMessage(two.page, 'my turn');
    for (const who of [one, two]) {
      assert.deepEqual(cspViolations(who.seen), []);
      assert.deepEqual(unexpectedErrors(who.seen), []);
      assert.deepEqual(failedFiles(who.seen), []);
    }
  });
});

describe('login rate limit', { timeout: 60_000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await startChatd({ config: { login_rate_per_ip: '1/h burst 2' } });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('says when to try again', async () => {
    const { page } = await openPage(browser, server.url);
    const attempt = () => Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/login')),
      login(page, 'nobody', 'wrong-password'),
    ]);
    for (let i = 0; i < 2; i += 1) {
      await attempt();
      await page.locator('#login-error', { hasText: 'Wrong username or password.' }).waitFor();
    }
    await attempt();
    await page.locator('#login-error', { hasText: /^Too many attempts\. Try again in \d+ (seconds?|minutes?)\.$/ }).waitFor();
  });
});
