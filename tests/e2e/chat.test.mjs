// End-to-end: two users in two browser profiles chat through a real chatd, then chatd
// is killed and restarted under the page, which must catch up by itself.

import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  assertInOrderOnce,
  connection,
  cspViolations,
  failedFiles,
  launchBrowser,
  memberNames,
  openConversation,
  openPage,
  register,
  login,
  send,
  sessionToken,
  unexpectedErrors,
  unreadBadge,
  waitConnected,
  waitForMessage,
  waitUntil,
} from './lib/browser.mjs';
import { outDir, removeDir, startChatd } from './lib/chatd.mjs';
import { connectChat, loginUser, registerUser } from './lib/net.mjs';

const XSS = '<img src=x onerror=alert(1)>';
const PASSWORD = { alice: 'alice-secret-1', bob: 'bob-secret-22', carol: 'carol-secret-333' };

describe('chat between two browsers', { timeout: 180_000 }, () => {
  let server;
  let browser;
  let alice;
  let bob;

  before(async () => {
    server = await startChatd();
    browser = await launchBrowser();
    alice = await openPage(browser, server.url);
    bob = await openPage(browser, server.url);
  });

  after(async () => {
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('serves the page under the strict CSP', async () => {
    const res = await alice.page.request.get(server.url + '/');
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
    assert.ok(await alice.page.locator('#auth-view').isVisible());
    assert.equal(await alice.page.title(), 'chatd');
  });

  it('shows registration and login errors in plain words', async () => {
    const { page } = alice;
    await register(page, 'alice', 'short');
    await page.locator('#register-error', { hasText: 'too short' }).waitFor();
    await register(page, 'a b', 'long-enough-1');
    await page.locator('#register-error', { hasText: 'Usernames are 3 to 32' }).waitFor();
    await register(page, 'alice', PASSWORD.alice);
    await waitConnected(page);

    await login(bob.page, 'bob', 'wrong-password');
    await bob.page.locator('#login-error', { hasText: 'Wrong username or password.' }).waitFor();
    await register(bob.page, 'alice', 'whatever-123');
    await bob.page.locator('#register-error', { hasText: 'That username is already taken.' }).waitFor();
    await register(bob.page, 'bob', PASSWORD.bob);
    await waitConnected(bob.page);
    assert.match(await bob.page.locator('#me-name').textContent(), /bob/);
  });

  it('both users are in the lobby and see each other', async () => {
    // alice was there first: she learns about bob from a presence event.
    await waitUntil(async () => (await memberNames(alice.page)).includes('bob'), 'bob in the lobby of alice');
    assert.deepEqual((await memberNames(bob.page)).sort(), ['alice', 'bob']);
    await waitUntil(async () => (await alice.page.locator('#online-list .person').count()) === 2, 'two users online');
  });

  it('joins a room and exchanges messages both ways', async () => {
    await alice.page.fill('#join-room', 'dev');
    await alice.page.press('#join-room', 'Enter');
    await alice.page.locator('#conv-title', { hasText: '# dev' }).waitFor();
    await bob.page.fill('#join-room', 'dev');
    await bob.page.click('#join-form button');
    await bob.page.locator('#conv-title', { hasText: '# dev' }).waitFor();
    await waitUntil(async () => (await memberNames(alice.page)).includes('bob'), 'bob joining dev (presence)');

    await send(alice.page, 'hello bob');
    const got = await waitForMessage(bob.page, 'hello bob');
    assert.equal(got.from, 'alice');
    await send(bob.page, 'hi alice, line one\nline two');
    const reply = await waitForMessage(alice.page, 'hi alice, line one\nline two');
    assert.equal(reply.from, 'bob');
    assert.equal(await alice.page.inputValue('#composer-text'), '', 'the composer is cleared after sending');
    // bob's own page may show his message a moment after alice's.
    await waitForMessage(bob.page, 'hi alice, line one\nline two');
    // Each side got its own message twice (the reply and the event): shown once.
    for (const page of [alice.page, bob.page]) {
      const list = await assertInOrderOnce(page);
      assert.deepEqual(list.map((m) => m.text), ['hello bob', 'hi alice, line one\nline two']);
    }
  });

  it('counts unread messages of rooms not in view', async () => {
    await openConversation(alice.page, 'room:lobby');
    await send(bob.page, 'are you there?');
    await send(bob.page, 'ping');
    await waitUntil(async () => (await unreadBadge(alice.page, 'room:dev')) === '2', 'unread badge 2 on dev');
    assert.equal(await alice.page.title(), '(2) chatd');
    await openConversation(alice.page, 'room:dev');
    await waitForMessage(alice.page, 'ping');
    assert.equal(await unreadBadge(alice.page, 'room:dev'), '');
  });

  it('shows markup in a message as text', async () => {
    await send(bob.page, XSS);
    const shown = await waitForMessage(alice.page, XSS);
    assert.equal(shown.text, XSS);
    await waitForMessage(bob.page, XSS);
    assert.equal(await alice.page.locator('#message-list img').count(), 0);
    assert.equal(await bob.page.locator('#message-list img').count(), 0);
    // No element was made of the text, so nothing can fire later; the last test checks
    // the dialogs of the whole run again.
    assert.deepEqual(alice.seen.dialogs, []);
    assert.deepEqual(bob.seen.dialogs, []);
  });

  it('sends direct messages both ways', async () => {
    await alice.page.fill('#dm-user', 'bob');
    await alice.page.press('#dm-user', 'Enter');
    await alice.page.locator('#conv-title', { hasText: 'bob' }).waitFor();
    await send(alice.page, 'psst, bob');
    await waitForMessage(alice.page, 'psst, bob');
    await waitUntil(async () => (await unreadBadge(bob.page, 'dm:alice')) === '1', 'a new thread with alice on bob\'s side');
    await bob.page.locator('.toast', { hasText: 'psst, bob' }).waitFor();
    await openConversation(bob.page, 'dm:alice');
    await waitForMessage(bob.page, 'psst, bob');
    await send(bob.page, 'got it');
    await waitForMessage(alice.page, 'got it');
    await waitForMessage(bob.page, 'got it'); // bob's own page may show it a moment after alice's
    for (const page of [alice.page, bob.page]) {
      assert.deepEqual((await assertInOrderOnce(page)).map((m) => m.text), ['psst, bob', 'got it']);
    }
  });

  it('subscribes to a user and receives what they publish', async () => {
    await bob.page.click('#tab-notifications');
    await bob.page.fill('#subscribe-user', 'alice');
    await bob.page.press('#subscribe-user', 'Enter');
    await bob.page.locator('#subscription-list .person[data-user=alice]').waitFor();

    await alice.page.click('#tab-notifications');
    await alice.page.fill('#publish-text', 'v1.0 is out');
    await alice.page.click('#publish-form button[type=submit]');
    await alice.page.locator('#publish-result', { hasText: 'Published to 1 subscriber session.' }).waitFor();
    await bob.page.locator('.toast', { hasText: 'v1.0 is out' }).waitFor();
    await bob.page.locator('#notification-list .notification-text', { hasText: 'v1.0 is out' }).waitFor();
    assert.equal(await bob.page.locator('#notification-list .notification-from').first().textContent(), 'alice');
    await alice.page.click('#tab-people');
    await bob.page.click('#tab-people');
  });

  it('unsubscribes: a publish then reaches nobody and shows no toast', async () => {
    await bob.page.click('#tab-notifications');
    await bob.page.click('#subscription-list .person[data-user=alice] button', { hasText: 'Unsubscribe' });
    await bob.page.locator('#subscription-list .person[data-user=alice]').waitFor({ state: 'detached' });
    await bob.page.locator('#subscription-list .empty', { hasText: 'You are not subscribed to anyone.' }).waitFor();
    await bob.page.click('#tab-people');
    const button = bob.page.locator('#online-list .person[data-user=alice] button[aria-pressed]');
    assert.equal(await button.getAttribute('aria-pressed'), 'false');
    assert.equal((await button.textContent()).trim(), 'Subscribe');
    const toastsBefore = await bob.page.locator('.toast').count();

    await alice.page.click('#tab-notifications');
    await alice.page.fill('#publish-text', 'nobody hears this');
    await alice.page.click('#publish-form button[type=submit]');
    await alice.page.locator('#publish-result', { hasText: 'Published. No subscriber is online right now.' }).waitFor();
    // Something sent after the publish, which must reach bob: had he still been
    // subscribed, the notification would have reached him before it (alice's publish was
    // answered, so its fan-out was queued first, and bob's frames arrive in order).
    const lobbyUnread = Number((await unreadBadge(bob.page, 'room:lobby')) || 0);
    const marker = await connectChat(server.url, await loginUser(server.url, 'alice', PASSWORD.alice));
    await marker.request('send', { room: 'lobby', text: 'after the publish' });
    marker.close();
    await waitUntil(async () => (await unreadBadge(bob.page, 'room:lobby')) === String(lobbyUnread + 1), 'the later lobby message on bob\'s side');
    assert.equal(await bob.page.locator('.toast', { hasText: 'nobody hears this' }).count(), 0);
    assert.ok((await bob.page.locator('.toast').count()) <= toastsBefore, 'no new toast');
    assert.equal(await bob.page.locator('#notification-list .notification-text', { hasText: 'nobody hears this' }).count(), 0);
    await alice.page.click('#tab-people');
  });

  it('takes a screenshot of the chat view', async () => {
    await openConversation(alice.page, 'room:dev');
    await alice.page.locator('#member-list .person[data-user=bob]').waitFor();
    await alice.page.locator('.toast').evaluateAll((toasts) => toasts.forEach((t) => t.remove()));
    await mkdir(outDir, { recursive: true });
    const file = path.join(outDir, 'chat.png');
    await alice.page.screenshot({ path: file });
    console.log(`# screenshot of the chat view: ${file}`);
    // The same page at phone width.
    await alice.page.setViewportSize({ width: 390, height: 780 });
    const phone = path.join(outDir, 'chat-phone.png');
    await alice.page.screenshot({ path: phone });
    console.log(`# screenshot at phone width: ${phone}`);
    await alice.page.setViewportSize({ width: 1280, height: 800 });
  });

  it('updates members live when someone leaves', async () => {
    await openConversation(bob.page, 'room:dev');
    await bob.page.click('#leave-room');
    await waitUntil(async () => !(await memberNames(alice.page)).includes('bob'), 'bob gone from dev');
    await bob.page.fill('#join-room', 'dev');
    await bob.page.press('#join-room', 'Enter');
    await waitUntil(async () => (await memberNames(alice.page)).includes('bob'), 'bob back in dev');
  });

  it('shows the history again after a reload', async () => {
    const before = await sessionToken(alice.page);
    assert.ok(before, 'the token is in sessionStorage');
    await alice.page.reload();
    await waitConnected(alice.page);
    await alice.page.locator('#conv-title', { hasText: '# dev' }).waitFor();
    await waitForMessage(alice.page, 'hello bob');
    const list = await assertInOrderOnce(alice.page);
    assert.deepEqual(list.map((m) => m.text), ['hello bob', 'hi alice, line one\nline two', 'are you there?', 'ping', XSS]);
    await openConversation(alice.page, 'dm:bob');
    await waitForMessage(alice.page, 'got it');
    assert.deepEqual((await assertInOrderOnce(alice.page)).map((m) => m.text), ['psst, bob', 'got it'], 'the thread with bob and its history');
    await openConversation(alice.page, 'room:dev');
  });

  it('reconnects after chatd is killed and restarted, and shows what was sent meanwhile', async () => {
    await registerUser(server.url, 'carol', PASSWORD.carol);
    const { connects } = await connection(alice.page);
    await server.kill();
    await waitUntil(async () => (await connection(alice.page)).state !== 'open', 'alice noticing the drop');
    await alice.page.locator('#conn-banner', { hasText: 'The connection to the server was lost.' }).waitFor();

    // carol sends to a chatd on the same data but another port, which the pages cannot
    // reach: what she sends is missed by alice however soon alice retries.
    const elsewhere = await startChatd({ dir: server.dir });
    const away = await connectChat(elsewhere.url, await loginUser(elsewhere.url, 'carol', PASSWORD.carol));
    await away.request('join', { room: 'dev' });
    const missed = ['while you were away 1', 'while you were away 2', 'while you were away 3'];
    for (const text of missed) await away.request('send', { room: 'dev', text });
    away.close();
    await elsewhere.stop();
    assert.notEqual((await connection(alice.page)).state, 'open', 'alice was still disconnected when carol sent');

    server = await startChatd({ dir: server.dir, port: server.port });
    const carol = await connectChat(server.url, await loginUser(server.url, 'carol', PASSWORD.carol));
    await carol.request('join', { room: 'dev' });
    // The backoff may have grown to several seconds while chatd was away.
    await waitConnected(alice.page, 45_000);
    assert.equal((await connection(alice.page)).connects, connects + 1);
    for (const text of missed) await waitForMessage(alice.page, text);
    const list = await assertInOrderOnce(alice.page);
    assert.deepEqual(list.slice(-3).map((m) => m.text), missed, 'nothing missing, nothing in between');
    await waitUntil(async () => (await memberNames(alice.page)).includes('carol'), 'carol in the members of dev');
    assert.ok((await memberNames(alice.page)).includes('alice'), 'alice rejoined dev');

    // bob's page comes back as well and has the same messages exactly once.
    await waitConnected(bob.page, 35_000);
    await openConversation(bob.page, 'room:dev');
    for (const text of missed) await waitForMessage(bob.page, text);
    await assertInOrderOnce(bob.page);

    // And the chat still works both ways.
    await send(bob.page, 'back again');
    await waitForMessage(alice.page, 'back again');
    await carol.waitFrame((f) => f.type === 'message' && f.text === 'back again');
    await assertInOrderOnce(alice.page);
    await assertInOrderOnce(bob.page);
    carol.close();
  });

  it('says the server is restarting on a graceful stop (1001) and reconnects once it is back', async () => {
    const before = { alice: (await connection(alice.page)).connects, bob: (await connection(bob.page)).connects };
    await server.stop(); // SIGTERM: chatd closes every WebSocket with 1001
    for (const who of [alice, bob]) {
      await who.page.locator('#conn-banner', { hasText: 'The server is restarting. Reconnecting…' }).waitFor();
      assert.notEqual((await connection(who.page)).state, 'open');
    }
    // Attempts fail while it is down (one is asked for now); the banner keeps saying why.
    await waitUntil(async () => (await connection(alice.page)).state === 'waiting', 'alice waiting to reconnect');
    const { retryAt } = await connection(alice.page);
    await alice.page.click('#conn-banner-action', { hasText: 'Reconnect now' });
    await waitUntil(async () => {
      const c = await connection(alice.page);
      return c.state === 'waiting' && c.retryAt !== retryAt;
    }, 'a failed attempt, and the next one scheduled');
    assert.equal(await alice.page.locator('#conn-banner-text').textContent(), 'The server is restarting. Reconnecting…');
    assert.equal(await alice.page.locator('#conn-status').evaluate((n) => n.title), 'The server is restarting.');

    server = await startChatd({ dir: server.dir, port: server.port });
    for (const [name, who] of [['alice', alice], ['bob', bob]]) {
      await waitConnected(who.page, 40_000);
      assert.equal((await connection(who.page)).connects, before[name] + 1, `${name} reconnected once`);
      assert.ok(await who.page.locator('#conn-banner').isHidden());
    }
    await openConversation(bob.page, 'room:dev');
    await send(bob.page, 'after the restart');
    await waitForMessage(alice.page, 'after the restart');
    await assertInOrderOnce(alice.page);
  });

  it('logs out and forgets the token', async () => {
    await alice.page.click('#logout');
    await alice.page.locator('#auth-view').waitFor();
    await alice.page.locator('#auth-notice', { hasText: 'You are logged out.' }).waitFor();
    assert.equal(await sessionToken(alice.page), null);
    await alice.page.reload();
    await alice.page.locator('#login-form').waitFor();
    assert.ok(await alice.page.locator('#auth-view').isVisible());
  });

  it('ran without CSP violations, page errors or dialogs', () => {
    for (const who of [alice, bob]) {
      assert.deepEqual(cspViolations(who.seen), []);
      assert.deepEqual(unexpectedErrors(who.seen), []);
      assert.deepEqual(failedFiles(who.seen), []);
      assert.ok(who.seen.files.length >= 10, 'the page and its modules were seen loading');
      assert.deepEqual(who.seen.dialogs, []);
    }
  });
});
