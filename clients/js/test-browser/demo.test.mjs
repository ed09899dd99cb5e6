// The demo page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is ever downloaded): two pages chat in one room
// of a real gateway; one page loses its socket and recovers what it missed;
// then the node is killed and started again on the same port. Both pages
// reconnect by themselves and show every message exactly once, in order.
// Saves a screenshot of the final state to target/browser/demo.png.
// Then the demo against a node that requires tokens, opened with
// ?token_url=/demo-token: the test plays the application's token endpoint on
// the page's origin (Playwright answers that path with 4-second JWTs), and
// the page refreshes its token before each expiry, says so, and stays
// connected well past the first token's expiry (target/browser/demo-token.png).
//
//   node --test clients/js/test-browser/demo.test.mjs

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';

import { REPO, startGateway } from '../test/gateway.mjs';
import { launchChromium } from './chromium.mjs';

const SHOTS = path.join(REPO, 'target', 'browser');
const WAIT = 15_000;

let browser = null;
let gateway = null;
let tokenGateway = null;
after(async () => {
  await browser?.close();
  await gateway?.stop();
  await tokenGateway?.stop();
});

/** Opens the demo in a fresh context (its own storage) and joins `room` as `name`. */
async function openChat(url, name, room, joinShot = null, prepare = null) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, deviceScaleFactor: 1 });
  if (prepare) await prepare(context);
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

const SECRET = 'demo-test-secret-demo-test-secret';

function jwt(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

test('with ?token_url the demo refreshes its short-lived token and stays connected', { timeout: 120_000 }, async () => {
  tokenGateway = await startGateway({ env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  browser ??= await launchChromium();
  mkdirSync(SHOTS, { recursive: true });
  const issued = [];
  // The application's token endpoint, on the page's origin: 4-second tokens.
  const tokenEndpoint = async (context) => {
    // (A URL predicate: a glob would match the page's own ?token_url=/demo-token too.)
    await context.route((url) => url.pathname === '/demo-token', (route) => {
      const exp = Math.floor(Date.now() / 1000) + 4;
      issued.push(exp);
      route.fulfill({
        status: 200,
        contentType: 'application/json',
        headers: { 'Cache-Control': 'no-store' },
        body: JSON.stringify({ token: jwt({ sub: 'ada', exp, rooms: ['demo-*'] }) }),
      });
    });
  };
  const url = `${tokenGateway.httpUrl}/demo/?token_url=/demo-token`;
  const ada = await openChat(url, 'Ada', 'demo-tokens', null, tokenEndpoint);
  const { page } = ada;
  assert.ok(issued.length >= 1, 'the page asked the endpoint for its first token');
  const firstExpiry = issued[0];
  assert.match(await page.textContent('#fact-token'), /^expires in \d+ s$/);
  assert.equal(await page.evaluate(() => window.roomcastDemo.client.session.user), 'ada');

  // Past the first token's expiry plus the node's leeway.
  const refreshed = () =>
    page.$$eval('#messages li.notice', (items) =>
      items.map((li) => li.textContent).filter((t) => /Token refreshed, expires in \d+ s\./.test(t)),
    );
  await page.waitForFunction(
    (until) => Date.now() / 1000 > until,
    firstExpiry + 6,
    { timeout: WAIT, polling: 200 },
  );
  assert.ok((await refreshed()).length >= 2, `refresh notices: ${await refreshed()}`);
  assert.equal(await page.getAttribute('#status', 'data-state'), 'connected');
  assert.equal(await page.textContent('#fact-reconnects'), '0', 'never reconnected');
  assert.match(await page.textContent('#fact-token'), /^expires in [0-4] s$/);
  const states = await page.evaluate(() => window.roomcastDemo.client.tokenExpiresAt);
  assert.ok(states > firstExpiry, 'a later expiry than the first token');
  assert.ok(issued.length >= 3, `${issued.length} tokens issued`);

  await say(ada, 'Still here after my first token expired.', [ada], 1);
  const texts = (await shown(page)).map((m) => m.text);
  assert.deepEqual(texts, ['Still here after my first token expired.']);
  assert.deepEqual(ada.problems, [], 'no page errors');
  await page.screenshot({ path: path.join(SHOTS, 'demo-token.png') });

  // Another origin's token_url is refused: the page stays anonymous (and
  // here, where tokens are required, cannot connect).
  const other = await browser.newPage();
  await other.goto(`${tokenGateway.httpUrl}/demo/?token_url=http://example.invalid/token`, { timeout: WAIT });
  assert.match(await other.textContent('#join-error'), /Ignored token_url/);
  await other.close();
});
