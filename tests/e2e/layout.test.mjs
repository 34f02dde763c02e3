// End-to-end: the page on a phone-width screen (no sideways scrolling, drawers for the
// rooms and the people), with the keyboard alone (labels on every field, Tab, Enter,
// Escape), and long messages counted the way the server counts them.

import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  cspViolations,
  failedFiles,
  launchBrowser,
  login,
  memberNames,
  messages,
  openPage,
  send,
  unexpectedErrors,
  waitConnected,
  waitForMessage,
  waitUntil,
} from './lib/browser.mjs';
import { outDir, removeDir, startChatd } from './lib/chatd.mjs';
import { connectChat, loginUser, registerUser } from './lib/net.mjs';

const PHONE = { width: 390, height: 780 };

/** Fails if the page can be scrolled sideways. */
async function assertNoSidewaysScroll(page, where) {
  const m = await page.evaluate(() => ({
    doc: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    inner: window.innerWidth,
  }));
  assert.ok(m.doc <= m.inner && m.body <= m.inner, `${where}: scrollWidth ${m.doc}/${m.body} > innerWidth ${m.inner}`);
}

/** Waits until the element is on screen, within the width of the viewport (drawers slide in). */
async function assertOnScreen(page, selector) {
  const width = page.viewportSize().width;
  let box = null;
  await waitUntil(async () => {
    box = await page.locator(selector).boundingBox();
    return box && box.x >= 0 && box.x + box.width <= width + 0.5;
  }, `${selector} within the screen (last seen at ${JSON.stringify(box)})`, 3000);
}

/** The id (or a description) of the focused element. */
const focused = (page) => page.evaluate(() => {
  const a = document.activeElement;
  if (!a || a === document.body) return 'body';
  if (a.id) return `#${a.id}`;
  const li = a.closest('li[data-key]');
  return li ? `item ${li.dataset.key}` : a.tagName.toLowerCase();
});

/** Presses Tab (or Shift+Tab) until `want` has the focus; fails after `max` presses. */
async function tabTo(page, want, { max = 40, back = false } = {}) {
  for (let i = 0; i < max; i += 1) {
    if ((await focused(page)) === want) return i;
    await page.keyboard.press(back ? 'Shift+Tab' : 'Tab');
  }
  throw new Error(`${want} not reached with ${max} presses of ${back ? 'Shift+Tab' : 'Tab'} (at ${await focused(page)})`);
}

/**
 * Every input, textarea and select (shown or not) has a label: a <label for>, an
 * aria-label or an aria-labelledby with text. Returns the ones without.
 */
const unlabelled = (page) => page.evaluate(() => [...document.querySelectorAll('input, textarea, select')]
  .filter((field) => field.type !== 'hidden')
  .filter((field) => {
    const byLabel = [...(field.labels || [])].some((l) => l.textContent.trim() !== '');
    const byAria = (field.getAttribute('aria-label') || '').trim() !== '';
    const byRef = (field.getAttribute('aria-labelledby') || '').split(/\s+/).filter(Boolean)
      .some((id) => (document.getElementById(id)?.textContent || '').trim() !== '');
    return !(byLabel || byAria || byRef);
  })
  .map((field) => field.id || field.outerHTML));

/** The text fields of the accessibility tree Chromium computes, with their names. */
async function axTextFields(page) {
  const cdp = await page.context().newCDPSession(page);
  try {
    const { nodes } = await cdp.send('Accessibility.getFullAXTree');
    return nodes
      .filter((n) => !n.ignored && ['textbox', 'searchbox', 'combobox', 'spinbutton', 'listbox'].includes(n.role?.value))
      .map((n) => ({ role: n.role.value, name: (n.name?.value || '').trim() }));
  } finally {
    await cdp.detach();
  }
}

/** Counts the displayed form fields (what the accessibility tree should list). */
const shownFields = (page) => page.evaluate(() => [...document.querySelectorAll('input, textarea, select')]
  .filter((f) => f.type !== 'hidden' && f.getClientRects().length > 0 && getComputedStyle(f).visibility !== 'hidden').length);

describe('at phone width', { timeout: 90_000 }, () => {
  let server;
  let browser;
  let kim;
  let lee;

  before(async () => {
    server = await startChatd();
    await registerUser(server.url, 'kim', 'kim-password-1');
    await registerUser(server.url, 'lee', 'lee-password-1');
    lee = await connectChat(server.url, await loginUser(server.url, 'lee', 'lee-password-1'));
    await lee.request('join', { room: 'dev' });
    browser = await launchBrowser();
    kim = await openPage(browser, server.url, { viewport: PHONE });
  });

  after(async () => {
    lee?.close();
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('logs in without sideways scrolling', async () => {
    await assertNoSidewaysScroll(kim.page, 'log in');
    await login(kim.page, 'kim', 'kim-password-1');
    await waitConnected(kim.page);
    await assertNoSidewaysScroll(kim.page, 'chat');
    for (const id of ['#toggle-sidebar', '#toggle-aside', '#open-profile', '#composer-text', '#composer-send']) await assertOnScreen(kim.page, id);
    // The side panels are drawers, closed.
    assert.equal(await kim.page.locator('#sidebar').isVisible(), false);
    assert.equal(await kim.page.locator('#aside').isVisible(), false);
  });

  it('opens the rooms drawer, joins a room and switches rooms', async () => {
    const { page } = kim;
    await page.click('#toggle-sidebar');
    await page.locator('#sidebar.open').waitFor();
    await waitUntil(() => page.locator('#sidebar').isVisible(), 'the rooms drawer shown');
    assert.equal(await page.getAttribute('#toggle-sidebar', 'aria-expanded'), 'true');
    await assertOnScreen(page, '#join-room');
    await assertNoSidewaysScroll(page, 'rooms drawer open');
    await page.fill('#join-room', 'dev');
    await page.press('#join-room', 'Enter');
    await page.locator('#conv-title', { hasText: '# dev' }).waitFor();
    assert.equal(await page.getAttribute('#toggle-sidebar', 'aria-expanded'), 'false', 'the drawer closes on switching');
    await waitUntil(async () => !(await page.locator('#sidebar').isVisible()), 'the drawer hidden');

    await page.click('#toggle-sidebar');
    await page.click('#sidebar li[data-key="room:lobby"] button');
    await page.locator('#conv-title', { hasText: '# lobby' }).waitFor();
    await page.click('#toggle-sidebar');
    await page.click('#sidebar li[data-key="room:dev"] button');
    await page.locator('#conv-title', { hasText: '# dev' }).waitFor();
  });

  it('sends and receives messages, long ones wrapped', async () => {
    const { page } = kim;
    await send(page, 'hello from a phone');
    await waitForMessage(page, 'hello from a phone');
    await lee.waitFrame((f) => f.type === 'message' && f.text === 'hello from a phone');
    const long = `${'unbroken'.repeat(40)} https://example.com/${'a'.repeat(200)}`;
    await lee.request('send', { room: 'dev', text: long });
    await waitForMessage(page, long);
    await assertNoSidewaysScroll(page, 'a long message');
    await assertOnScreen(page, '#message-list .message:last-child .message-text');
  });

  it('opens the people drawer and closes it with Escape', async () => {
    const { page } = kim;
    await page.click('#toggle-aside');
    await waitUntil(() => page.locator('#aside').isVisible(), 'the people drawer shown');
    await waitUntil(async () => (await memberNames(page)).includes('lee'), 'lee among the members');
    await assertOnScreen(page, '#member-list .person[data-user=lee]');
    await assertNoSidewaysScroll(page, 'people drawer open');
    await page.keyboard.press('Escape');
    await waitUntil(async () => !(await page.locator('#aside').isVisible()), 'the people drawer closed');
    assert.equal(await focused(page), '#toggle-aside', 'focus back on the button that opened it');
    // The scrim closes it too.
    await page.click('#toggle-aside');
    await waitUntil(() => page.locator('#aside').isVisible(), 'the people drawer shown again');
    await page.mouse.click(40, 400);
    await waitUntil(async () => !(await page.locator('#aside').isVisible()), 'closed by a tap beside it');
    await mkdir(outDir, { recursive: true });
    const file = path.join(outDir, 'phone-dev.png');
    await page.screenshot({ path: file });
    console.log(`# screenshot at phone width: ${file}`);
  });

  it('ran without CSP violations or page errors', () => {
    assert.deepEqual(cspViolations(kim.seen), []);
    assert.deepEqual(unexpectedErrors(kim.seen), []);
    assert.deepEqual(failedFiles(kim.seen), []);
  });
});

describe('with the keyboard', { timeout: 90_000 }, () => {
  let server;
  let browser;
  let max;
  let nia;

  before(async () => {
    server = await startChatd();
    await registerUser(server.url, 'max', 'max-password-1');
    await registerUser(server.url, 'nia', 'nia-password-1');
    nia = await connectChat(server.url, await loginUser(server.url, 'nia', 'nia-password-1'));
    browser = await launchBrowser();
    max = await openPage(browser, server.url);
  });

  after(async () => {
    nia?.close();
    await browser?.close();
    await server?.kill();
    if (server) await removeDir(server.dir);
  });

  it('labels every field', async () => {
    const { page } = max;
    assert.deepEqual(await unlabelled(page), [], 'fields without a label');
    const fields = await axTextFields(page);
    assert.equal(fields.length, await shownFields(page), JSON.stringify(fields));
    assert.deepEqual(fields.filter((f) => !f.name), [], 'fields without an accessible name');
    assert.deepEqual(fields.map((f) => f.name), ['Username', 'Password']);
  });

  it('logs in, sends, joins and switches rooms with Tab and Enter', async () => {
    const { page } = max;
    assert.equal(await focused(page), '#login-username', 'the first field has the focus');
    await page.keyboard.type('max');
    await page.keyboard.press('Tab');
    assert.equal(await focused(page), '#login-password');
    await page.keyboard.type('max-password-1');
    await page.keyboard.press('Enter');
    await waitConnected(page);
    await page.locator('#conv-title', { hasText: '# lobby' }).waitFor();
    await waitUntil(async () => (await focused(page)) === '#composer-text', 'the composer focused once connected');
    await page.keyboard.type('typed, not clicked');
    await page.keyboard.press('Enter');
    await waitForMessage(page, 'typed, not clicked');

    // Every field of the chat view is labelled too.
    assert.deepEqual(await unlabelled(page), []);
    const fields = await axTextFields(page);
    assert.equal(fields.length, await shownFields(page));
    assert.deepEqual(fields.filter((f) => !f.name), []);

    // Back through the page to the room field, join a room, write in it.
    await tabTo(page, '#join-room', { back: true });
    await page.keyboard.type('keys');
    await page.keyboard.press('Enter');
    await page.locator('#conv-title', { hasText: '# keys' }).waitFor();
    assert.equal(await focused(page), '#composer-text');
    await page.keyboard.type('in #keys');
    await page.keyboard.press('Enter');
    await waitForMessage(page, 'in #keys');
    // Shift+Enter is a new line, not a send.
    await page.keyboard.type('line one');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('line two');
    await page.keyboard.press('Enter');
    await waitForMessage(page, 'line one\nline two');

    await tabTo(page, 'item room:lobby', { back: true });
    await page.keyboard.press('Enter');
    await page.locator('#conv-title', { hasText: '# lobby' }).waitFor();
    await waitForMessage(page, 'typed, not clicked');
  });

  it('opens the profile with Enter and closes it with Escape', async () => {
    const { page } = max;
    await tabTo(page, '#open-profile', { back: true });
    await page.keyboard.press('Enter');
    await page.locator('#profile-dialog[open]').waitFor();
    assert.equal(await focused(page), '#display-name');
    assert.deepEqual(await unlabelled(page), []);
    const fields = await axTextFields(page);
    assert.deepEqual(fields.map((f) => f.name), ['Display name', 'Current password', 'New password', 'Repeat new password']);
    await page.keyboard.press('Escape');
    await page.locator('#profile-dialog[open]').waitFor({ state: 'detached' });
    assert.equal(await focused(page), '#open-profile', 'focus back on the button that opened it');
  });

  it('works the drawers with Enter and Escape at phone width', async () => {
    const { page } = max;
    await page.setViewportSize(PHONE);
    for (const [toggle, drawer] of [['#toggle-sidebar', '#sidebar'], ['#toggle-aside', '#aside']]) {
      await page.focus('#composer-text');
      await tabTo(page, toggle, { back: true });
      await page.keyboard.press('Enter');
      await waitUntil(() => page.locator(drawer).isVisible(), `${drawer} open`);
      const inside = await page.evaluate((sel) => document.querySelector(sel).contains(document.activeElement), drawer);
      assert.ok(inside, `focus moved into ${drawer}`);
      await page.keyboard.press('Escape');
      await waitUntil(async () => !(await page.locator(drawer).isVisible()), `${drawer} closed`);
      assert.equal(await focused(page), toggle);
    }
    // Switching rooms from the drawer with the keyboard alone.
    await page.focus('#toggle-sidebar');
    await page.keyboard.press('Enter');
    await waitUntil(() => page.locator('#sidebar').isVisible(), 'rooms drawer open');
    await tabTo(page, 'item room:keys');
    await page.keyboard.press('Enter');
    await page.locator('#conv-title', { hasText: '# keys' }).waitFor();
    assert.equal(await focused(page), '#composer-text');
    await waitUntil(async () => !(await page.locator('#sidebar').isVisible()), 'the drawer closed');
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  it('counts a message in characters as the server does', async () => {
    const { page } = max;
    await nia.request('join', { room: 'keys' });
    // 4000 emoji are 8000 UTF-16 units, which a maxlength of 4000 would cut in half.
    const emoji = '😀'.repeat(4000);
    await page.fill('#composer-text', emoji);
    await page.press('#composer-text', 'Enter');
    const got = await nia.waitFrame((f) => f.type === 'message' && f.from === 'max' && f.text.startsWith('😀'));
    assert.equal([...got.text].length, 4000, 'sent whole');
    await waitUntil(async () => (await messages(page)).some((m) => m.text === emoji), 'shown whole');

    const over = 'a'.repeat(4001);
    await page.fill('#composer-text', over);
    await page.press('#composer-text', 'Enter');
    await page.locator('#composer-error', { hasText: 'That is 1 character too long: a message can have at most 4000 characters.' }).waitFor();
    assert.equal(await page.inputValue('#composer-text'), over, 'the text stays for editing');
    // Shortened, it goes. max's messages reach nia in the order sent, so the one too
    // long, had it been sent, would have arrived before this one.
    await page.press('#composer-text', 'Backspace');
    await page.press('#composer-text', 'Enter');
    await nia.waitFrame((f) => f.type === 'message' && f.text === 'a'.repeat(4000));
    assert.ok(!nia.frames.some((f) => f.type === 'message' && f.text === over), 'nothing was sent');
    assert.deepEqual(
      nia.frames.filter((f) => f.type === 'message' && f.room === 'keys' && f.from === 'max').map((f) => f.text.length),
      [8000, 4000],
      'the emoji one, then the shortened one',
    );
    assert.ok(await page.locator('#composer-error').isHidden());
  });

  it('ran without CSP violations or page errors', () => {
    assert.deepEqual(cspViolations(max.seen), []);
    assert.deepEqual(unexpectedErrors(max.seen), []);
    assert.deepEqual(failedFiles(max.seen), []);
  });
});
