// End-to-end: what the server keeps for an account reaches every browser it logs in
// from. A direct message from someone new, received while logged out, shows up with an
// unread badge in a fresh browser profile; a subscription made in one profile shows in
// another; log out leaves nothing of the chat behind in the browser.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  cspViolations,
  failedFiles,
  launchBrowser,
  login,
  messages,
  openConversation,
  openPage,
  send,
  unexpectedErrors,
  unreadBadge,
  waitConnected,
  waitForMessage,
  waitUntil,
} from './lib/browser.mjs';
import { removeDir, startChatd } from './lib/chatd.mjs';
import { registerUser } from './lib/net.mjs';

const PASSWORD = { ivy: 'ivy-password-1', jack: 'jack-password-1' };

/** The chatd keys this page keeps in localStorage. */
const storedKeys = (page) => page.evaluate(() => Object.keys(window.localStorage).filter((k) => k.startsWith('chatd.')));

describe('the account across browsers', { timeout: 120_000 }, () => {
  let server;
  let browser;
  let ivy;
  const pages = [];

  /** A fresh browser profile with jack logged in. */
  async function jackIn() {
    const jack = await openPage(browser, server.url);
    pages.push(jack);
    await login(jack.page, 'jack', PASSWORD.jack);
    await waitConnected(jack.page);
    return jack;
  }

  before(async () => {
    server = await startChatd();
    for (const name of ['ivy', 'jack']) await registerUser(server.url, name, PASSWORD[name]);
    browser = await launchBrowser();
    ivy = await openPage(browser, server.url);
    pages.push(ivy);
    await login(ivy.page, 'ivy', PASSWORD.ivy);
    await waitConnected(ivy.page);
  });

  after(async () => {
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('a direct message from someone new, sent while logged out, waits with an unread badge', async () => {
    // jack has been here before, and logged out.
    const earlier = await jackIn();
    await earlier.page.click('#logout');
    await earlier.page.locator('#auth-view').waitFor();

    // ivy never talked to jack.
    await ivy.page.fill('#dm-user', 'jack');
    await ivy.page.press('#dm-user', 'Enter');
    await ivy.page.locator('#conv-title', { hasText: 'jack' }).waitFor();
    await send(ivy.page, 'hello jack, we never met');
    await waitForMessage(ivy.page, 'hello jack, we never met');

    const jack = await jackIn();
    await waitUntil(async () => (await unreadBadge(jack.page, 'dm:ivy')) === '1', "ivy's thread with 1 unread");
    assert.equal(await jack.page.title(), '(1) chatd');
    assert.match(await jack.page.locator('#sidebar li[data-key="dm:ivy"] button').getAttribute('aria-label'), /Direct messages with ivy, 1 unread/);
    await openConversation(jack.page, 'dm:ivy');
    const shown = await waitForMessage(jack.page, 'hello jack, we never met');
    assert.equal(shown.from, 'ivy');
    assert.equal(await unreadBadge(jack.page, 'dm:ivy'), '');
    assert.equal(await jack.page.title(), 'chatd');

    // Read here: a reload does not count it again.
    await jack.page.reload();
    await waitConnected(jack.page);
    await jack.page.locator('#sidebar li[data-key="dm:ivy"]').waitFor();
    // The thread in view is caught up last of all it learns after the welcome (its
    // conversations first): once its message is shown, any unread count is in place.
    await waitForMessage(jack.page, 'hello jack, we never met');
    assert.equal(await unreadBadge(jack.page, 'dm:ivy'), '');
    await jack.page.click('#logout');
    await jack.page.locator('#auth-view').waitFor();
  });

  it('a subscription made in one browser shows as subscribed in another', async () => {
    const first = await jackIn();
    await first.page.click('#tab-notifications');
    await first.page.fill('#subscribe-user', 'ivy');
    await first.page.press('#subscribe-user', 'Enter');
    await first.page.locator('#subscription-list .person[data-user=ivy]').waitFor();
    await first.ctx.close();

    const second = await jackIn();
    await second.page.click('#tab-notifications');
    await second.page.locator('#subscription-list .person[data-user=ivy]').waitFor();
    await second.page.click('#tab-people');
    const button = second.page.locator('#online-list .person[data-user=ivy] button[aria-pressed]');
    await waitUntil(async () => (await button.count()) === 1 && (await button.getAttribute('aria-pressed')) === 'true', 'ivy shown as subscribed');
    assert.equal((await button.textContent()).trim(), 'Subscribed');
    // And it is the real thing: what ivy publishes reaches this browser.
    await ivy.page.click('#tab-notifications');
    await ivy.page.fill('#publish-text', 'news from ivy');
    await ivy.page.click('#publish-form button[type=submit]');
    await ivy.page.locator('#publish-result', { hasText: 'Published to 1 subscriber session.' }).waitFor();
    await second.page.locator('.toast', { hasText: 'news from ivy' }).waitFor();
    await ivy.page.click('#tab-people');
  });

  it('keeps only view preferences in the browser, and log out removes them', async () => {
    const jack = pages.at(-1);
    assert.deepEqual(await storedKeys(jack.page), ['chatd.prefs.jack']);
    const prefs = await jack.page.evaluate(() => JSON.parse(window.localStorage.getItem('chatd.prefs.jack')));
    assert.deepEqual(Object.keys(prefs).sort(), ['closed', 'current', 'read', 'rooms']);
    assert.ok(!JSON.stringify(prefs).includes('news from ivy'), 'no messages or notifications');
    await jack.page.click('#logout');
    await jack.page.locator('#auth-view').waitFor();
    assert.deepEqual(await storedKeys(jack.page), []);
    assert.equal(await jack.page.evaluate(() => window.sessionStorage.getItem('chatd.session')), null);
  });

  it('a closed thread stays closed across a reload until a new message comes', async () => {
    const jack = await jackIn();
    await jack.page.locator('#sidebar li[data-key="dm:ivy"]').waitFor();
    await openConversation(jack.page, 'dm:ivy');
    await waitForMessage(jack.page, 'hello jack, we never met');
    await jack.page.click('#close-thread');
    await jack.page.locator('#sidebar li[data-key="dm:ivy"]').waitFor({ state: 'detached' });
    await jack.page.reload();
    await waitConnected(jack.page);
    // The subscription to ivy is shown from the same resync step that applies the
    // server's list of conversations: once it is there, that list was applied.
    await jack.page.locator('#subscription-list .person[data-user=ivy]').waitFor({ state: 'attached' });
    assert.equal(await jack.page.locator('#sidebar li[data-key="dm:ivy"]').count(), 0);

    await ivy.page.fill('#dm-user', 'jack');
    await ivy.page.press('#dm-user', 'Enter');
    await send(ivy.page, 'are you still there?');
    await waitUntil(async () => (await unreadBadge(jack.page, 'dm:ivy')) === '1', 'the thread back, 1 unread');
    await openConversation(jack.page, 'dm:ivy');
    await waitForMessage(jack.page, 'are you still there?');
    assert.deepEqual((await messages(jack.page)).map((m) => m.text), ['hello jack, we never met', 'are you still there?']);
  });

  it('ran without CSP violations or page errors', () => {
    for (const who of pages) {
      if (who.page.isClosed()) continue;
      assert.deepEqual(cspViolations(who.seen), []);
      assert.deepEqual(unexpectedErrors(who.seen), []);
      assert.deepEqual(failedFiles(who.seen), []);
    }
  });
});
