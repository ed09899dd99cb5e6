// The demo page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is ever downloaded): two pages chat in one room
// of a real gateway; one page loses its socket and recovers what it missed;
// then the node is killed and started again on the same port. Both pages
// reconnect by themselves and show every message exactly once, in order.
// Saves a screenshot of the final state to target/browser/demo.png.
//
//   node --test clients/js/test-browser/demo.test.mjs

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';

import { REPO, startGateway } from '../test/gateway.mjs';
import { launchChromium } from './chromium.mjs';

const SHOTS = path.join(REPO, 'target', 'browser');
const WAIT = 15_000;

let browser = null;
let gateway = null;
after(async () => {
  await browser?.close();
  await gateway?.stop();
});

/** Opens the demo in a fresh context (its own storage) and joins `room` as `name`. */
async function openChat(url, name, room, joinShot = null) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (msg) => {
    // Chromium logs every refused WebSocket attempt; those are expected here.
    if (msg.type() === 'error' && !/WebSocket connection to .* failed/.test(msg.text())) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  await page.goto(url, { timeout: WAIT });
  await page.fill('#name', name);
  await page.fill('#room', room);
  if (joinShot) await page.screenshot({ path: joinShot });
  await page.click('#join');
  await page.waitForSelector('#chat-view:not([hidden])', { timeout: WAIT });
  await waitState(page, 'connected');
  return { page, name, problems };
}

function waitState(page, state) {
  return page.waitForSelector(`#status[data-state="${state}"]`, { timeout: WAIT });
}

/** The chat messages the page shows, in DOM order. */
function shown(page) {
  return page.$$eval('#messages li.msg', (items) =>
    items.map((li) => ({
      key: li.dataset.key,
      author: li.querySelector('.author').textContent,
      text: li.querySelector('.msg-text').textContent,
      recovered: li.classList.contains('recovered'),
    })),
  );
}

async function waitForTexts(chat, count) {
  await chat.page.waitForFunction((n) => document.querySelectorAll('#messages li.msg').length >= n, count, {
    timeout: WAIT,
  });
}

/** Types `text` in `from`'s composer and waits until every page shows it. */
async function say(from, text, pages, total) {
  await from.page.fill('#text', text);
  await from.page.press('#text', 'Enter');
  for (const chat of pages) await waitForTexts(chat, total);
}

function assertOnceInOrder(messages, expected, who) {
  const keys = messages.map((m) => m.key);
  assert.equal(new Set(keys).size, keys.length, `${who}: a message is shown twice: ${keys}`);
  assert.deepEqual(
    messages.map((m) => `${m.author}: ${m.text}`),
    expected,
    `${who}: messages in order, each once`,
  );
}

test('two pages chat across a lost socket and a node restart', { timeout: 120_000 }, async () => {
  gateway = await startGateway();
  const url = `${gateway.httpUrl}/demo/`;
  browser = await launchChromium();

  mkdirSync(SHOTS, { recursive: true });
  const alice = await openChat(url, 'Alice', 'demo-room', path.join(SHOTS, 'join.png'));
  const bob = await openChat(url, 'Bob', 'demo-room');
  const both = [alice, bob];

  // Each sees the other in the presence list.
  for (const chat of both) {
    await chat.page.waitForFunction(() => document.querySelectorAll('#members li').length === 2, null, {
      timeout: WAIT,
    });
  }
  assert.match(await alice.page.textContent('#members'), /Alice \(you\)/);

  const expected = [];
  let n = 0;
  const chatLine = async (from, text) => {
    n += 1;
    expected.push(`${from.name}: ${text}`);
    await say(from, text, both, n);
  };
  await chatLine(alice, 'Hi Bob!');
  await chatLine(bob, 'Hello Alice, how are you?');
  await chatLine(alice, 'Fine. Watch this: the node is about to go away.');
  // Names learned from messages show in the presence list.
  await alice.page.waitForFunction(() => document.querySelector('#members').textContent.includes('Bob'), null, {
    timeout: WAIT,
  });

  // Bob's socket drops; Alice keeps talking; Bob resumes and recovers.
  await bob.page.evaluate(() => window.roomcastDemo.client.dropConnectionForTest(1500));
  await waitState(bob.page, 'reconnecting');
  for (const text of ['Bob, are you still there?', 'You missed this one.']) {
    n += 1;
    expected.push(`Alice: ${text}`);
    await say(alice, text, [alice], n);
  }
  await waitState(bob.page, 'connected');
  await waitForTexts(bob, n);
  const recovered = (await shown(bob.page)).filter((m) => m.recovered).map((m) => m.text);
  assert.deepEqual(recovered, ['Bob, are you still there?', 'You missed this one.']);
  assert.match(await bob.page.textContent('#messages'), /2 missed messages recovered/);
  await chatLine(bob, 'Back, and I got both.');

  // The node dies and comes back on the same port: a new epoch.
  await gateway.stop('SIGKILL');
  for (const chat of both) await waitState(chat.page, 'reconnecting');
  gateway = await gateway.restart();
  for (const chat of both) await waitState(chat.page, 'connected');
  for (const chat of both) {
    await chat.page.waitForFunction(
      () => document.querySelector('#messages').textContent.includes('cannot be recovered'),
      null,
      { timeout: WAIT },
    );
    await chat.page.waitForFunction(() => document.querySelectorAll('#members li').length === 2, null, {
      timeout: WAIT,
    });
  }
  await chatLine(bob, 'That was a restart. Still here?');
  await chatLine(alice, 'Yes! Everything is still in order.');

  for (const chat of both) {
    const messages = await shown(chat.page);
    assertOnceInOrder(messages, expected, chat.name);
    // Offsets restart after the restart: two epochs on screen.
    const epochs = new Set(messages.map((m) => m.key.split(':')[0]));
    assert.equal(epochs.size, 2, `${chat.name}: two epochs`);
    assert.deepEqual(chat.problems, [], `${chat.name}: no page errors`);
  }
  assert.equal(await alice.page.textContent('#fact-reconnects'), '1');
  assert.equal(await bob.page.textContent('#fact-reconnects'), '2');

  await alice.page.screenshot({ path: path.join(SHOTS, 'demo.png') });
  await bob.page.screenshot({ path: path.join(SHOTS, 'demo-bob.png') });
});
