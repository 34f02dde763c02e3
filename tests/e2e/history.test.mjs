// End-to-end: the room directory, paging back through history by scrolling to the top,
// and new messages sticking to the bottom unless the user scrolled up.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  assertInOrderOnce,
  cspViolations,
  failedFiles,
  launchBrowser,
  openPage,
  register,
  unexpectedErrors,
  waitConnected,
  waitForMessage,
  waitUntil,
} from './lib/browser.mjs';
import { removeDir, startChatd } from './lib/chatd.mjs';
import { connectChat, loginUser, registerUser } from './lib/net.mjs';

const COUNT = 75;
const label = (i) => `archived message ${String(i).padStart(2, '0')}`;

describe('history paging and scrolling', { timeout: 90_000 }, () => {
  let server;
  let browser;
  let erin;
  let frank;

  /** Scroll metrics of the message list. */
  const scroll = () => frank.page.locator('#messages').evaluate((box) => ({
    top: box.scrollTop,
    fromBottom: box.scrollHeight - box.scrollTop - box.clientHeight,
  }));

  before(async () => {
    // A generous chat rate limit: erin fills the room quickly.
    server = await startChatd({ config: { ws_rate: '1000/s burst 1000' } });
    await registerUser(server.url, 'erin', 'erin-password-1');
    erin = await connectChat(server.url, await loginUser(server.url, 'erin', 'erin-password-1'));
    await erin.request('join', { room: 'archive' });
    for (let i = 1; i <= COUNT; i += 1) await erin.request('send', { room: 'archive', text: label(i) });
    browser = await launchBrowser();
    frank = await openPage(browser, server.url);
  });

  after(async () => {
    erin?.close();
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('lists rooms with their member counts and joins one from the list', async () => {
    await register(frank.page, 'frank', 'frank-password-1');
    await waitConnected(frank.page);
    const entry = frank.page.locator('#directory-list button', { hasText: '# archive' });
    await entry.waitFor();
    assert.equal((await entry.locator('.conv-count').textContent()).trim(), '1');
    assert.equal((await frank.page.locator('#room-list li[data-key="room:lobby"] .conv-count').textContent()).trim(), '2');
    await entry.click();
    await frank.page.locator('#conv-title', { hasText: '# archive' }).waitFor();
    await waitUntil(async () => (await frank.page.locator('#room-list li[data-key="room:archive"] .conv-count').textContent()).trim() === '2', 'two members in archive');
  });

  it('shows the latest page first and pages back when scrolled to the top', async () => {
    await waitForMessage(frank.page, label(COUNT));
    let list = await assertInOrderOnce(frank.page);
    assert.deepEqual(list.map((m) => m.text), Array.from({ length: 50 }, (_, i) => label(COUNT - 49 + i)));
    assert.ok((await scroll()).fromBottom < 5, 'opened at the bottom');

    await frank.page.locator('#messages').evaluate((box) => {
      box.scrollTop = 0;
    });
    await waitForMessage(frank.page, label(1));
    list = await assertInOrderOnce(frank.page);
    assert.deepEqual(list.map((m) => m.text), Array.from({ length: COUNT }, (_, i) => label(i + 1)));
    await frank.page.locator('#history-status', { hasText: 'This is the beginning of #archive.' }).waitFor();
    assert.ok((await scroll()).top > 0, 'the messages in view stayed in view');
  });

  it('keeps new messages at the bottom unless the user scrolled up', async () => {
    await frank.page.locator('#messages').evaluate((box) => {
      box.scrollTop = box.scrollHeight;
    });
    await erin.request('send', { room: 'archive', text: 'fresh one' });
    await waitForMessage(frank.page, 'fresh one');
    await waitUntil(async () => (await scroll()).fromBottom < 5, 'still at the bottom');
    assert.ok(await frank.page.locator('#jump-latest').isHidden());

    await frank.page.locator('#messages').evaluate((box) => {
      box.scrollTop = 200;
    });
    await erin.request('send', { room: 'archive', text: 'while scrolled up' });
    await waitForMessage(frank.page, 'while scrolled up');
    assert.equal((await scroll()).top, 200, 'the view did not jump');
    await frank.page.locator('#jump-latest').click();
    await waitUntil(async () => (await scroll()).fromBottom < 5, 'back at the bottom');
    assert.ok(await frank.page.locator('#jump-latest').isHidden());
    assert.equal(await frank.page.evaluate(() => document.activeElement.id), 'composer-text');
  });

  it('ran without CSP violations or page errors', () => {
    assert.deepEqual(cspViolations(frank.seen), []);
    assert.deepEqual(unexpectedErrors(frank.seen), []);
    assert.deepEqual(failedFiles(frank.seen), []);
  });

  it('would notice a file of the page failing to load', async () => {
    // The checks above are only worth something if they see a broken page.
    const probe = await openPage(browser, server.url);
    await probe.page.evaluate(() => {
      const script = document.createElement('script');
      script.type = 'module';
      script.src = '/js/missing.mjs';
      document.head.append(script);
    });
    await waitUntil(() => failedFiles(probe.seen).length > 0, 'the missing module noticed');
    const failed = failedFiles(probe.seen).map((f) => [new URL(f.url).pathname, f.status]);
    assert.ok(failed.some(([p, status]) => p === '/js/missing.mjs' && status === 404), JSON.stringify(failed));
    assert.ok(failed.every(([p]) => p === '/js/missing.mjs'), JSON.stringify(failed));
    await waitUntil(() => unexpectedErrors(probe.seen).length > 0, 'its console error kept');
    await probe.ctx.close();
  });
});
