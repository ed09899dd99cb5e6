// The admin page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is ever downloaded) against a real cluster on
// loopback: Redis, the presence service and two gateways. A wrong key is
// refused; after the login the page shows both nodes, their connection
// counts following WebSocket clients as they come and go; the room
// inspector shows the room's members (on both nodes) and last messages; a
// message published from the console reaches a real WebSocket client; a
// user disconnected from the page sees its socket closed. The page must not
// make a single request outside the node that served it. Saves
// target/admin-screenshot.png.
//
//   node --experimental-websocket --test clients/js/test-browser/admin.test.mjs

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';

import { startCluster } from '../test/cluster.mjs';
import { API_KEY, REPO, waitFor } from '../test/gateway.mjs';
import { launchChromium } from './chromium.mjs';

const ADMIN_KEY = 'browser-test-admin-key';
const SCREENSHOT = path.join(REPO, 'target', 'admin-screenshot.png');
const WAIT = 15_000;

let browser = null;
let cluster = null;
const sockets = [];
after(async () => {
  for (const ws of sockets) ws.close();
  await browser?.close();
  await cluster?.stop();
});

/**
 * A WebSocket client of `gateway` that said hello (anonymous) and joined
 * `room`: its user and session, the messages it got, and how it closed.
 */
async function member(gateway, room) {
  const ws = new WebSocket(gateway.wsUrl, 'roomcast.v1.json');
  sockets.push(ws);
  const client = { ws, messages: [], closed: null };
  client.closedPromise = new Promise((resolve) => {
    ws.addEventListener('close', (event) => {
      client.closed = event.code;
      resolve(event.code);
    });
  });
  const welcome = new Promise((resolve, reject) => {
    ws.addEventListener('error', () => reject(new Error('WebSocket error')));
    ws.addEventListener('message', (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'welcome') resolve(frame);
      if (frame.type === 'joined') client.joined?.();
      if (frame.type === 'message') client.messages.push(frame);
    });
  });
  await new Promise((resolve) => ws.addEventListener('open', resolve, { once: true }));
  ws.send(JSON.stringify({ type: 'hello', id: 1 }));
  const hello = await welcome;
  client.user = hello.user;
  client.session = hello.session;
  const joined = new Promise((resolve) => {
    client.joined = resolve;
  });
  ws.send(JSON.stringify({ type: 'join', id: 2, room }));
  await joined;
  return client;
}

/** The connection count the page shows for `node`, once it is `count`. */
async function showsConnections(page, node, count) {
  await page.waitForFunction(
    ([id, n]) => {
      const card = document.querySelector(`article[data-node="${id}"]`);
      return card?.dataset.state === 'live' && card.querySelector('[data-field="connections"]')?.textContent === String(n);
    },
    [node, count],
    { timeout: WAIT },
  );
}

/**
 * Runs in the page: every visible element with text of its own whose
 * contrast against its (first opaque) background is under WCAG AA (4.5:1,
 * 3:1 for large or bold large text).
 */
function lowContrastTexts() {
  const rgb = (text) => (text.match(/[\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const lin = (c) => {
      const v = c / 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  };
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const [r, g, b, a = 1] = rgb(getComputedStyle(node).backgroundColor);
      if (a > 0.5) return [r, g, b];
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (!own || !el.checkVisibility?.() || el.closest('.visually-hidden')) continue;
    const style = getComputedStyle(el);
    const [l1, l2] = [luminance(rgb(style.color)), luminance(background(el))].sort((x, y) => y - x);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) low.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}": ${ratio.toFixed(2)}`);
  }
  return low;
}

test('the admin page shows a live cluster and acts on it', { timeout: 150_000 }, async () => {
  cluster = await startCluster(['node-a', 'node-b'], {
    ROOMCAST_ADMIN__ENABLED: 'true',
    ROOMCAST_ADMIN__KEY: ADMIN_KEY,
  });
  const [a, b] = cluster.gateways;
  browser = await launchChromium();
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on('request', (request) => requests.push(request.url()));
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (msg) => {
    // A refused login and a refused call are logged by Chromium as failed loads.
    if (msg.type() === 'error' && !/status of 401/.test(msg.text())) problems.push(`console: ${msg.text()}`);
  });

  // A wrong key is refused, with a message; the right one opens the page.
  await page.goto(`${a.httpUrl}/admin/`, { timeout: WAIT });
  await page.waitForSelector('#login-view:not([hidden])', { timeout: WAIT });
  await page.fill('#admin-key', 'not-the-admin-key');
  await page.press('#admin-key', 'Enter');
  await page.waitForSelector('#login-error:not([hidden])', { timeout: WAIT });
  assert.match(await page.textContent('#login-error'), /Wrong admin key/);
  assert.equal(await page.isHidden('#dashboard'), true);
  await page.fill('#admin-key', ADMIN_KEY);
  await page.click('#login');
  await page.waitForSelector('#dashboard:not([hidden])', { timeout: WAIT });
  assert.match(await page.textContent('#session-text'), /Served by node-a/);

  // The session cookie is out of the page's reach and bound to this site.
  assert.equal(await page.evaluate(() => document.cookie), '');
  const [cookie] = await context.cookies();
  assert.equal(cookie.name, 'roomcast_admin');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/admin');

  // Both nodes, and their connections as clients come.
  await showsConnections(page, 'node-a', 0);
  await showsConnections(page, 'node-b', 0);
  const alice = await member(a, 'ops');
  const bob = await member(b, 'ops');
  const carol = await member(b, 'ops');
  await showsConnections(page, 'node-a', 1);
  await showsConnections(page, 'node-b', 2);
  await b.publish('ops', { text: 'first' });
  await a.publish('ops', { text: 'second' });

  // The room inspector: members on both nodes, the last messages.
  await page.fill('#room-name', 'ops');
  await page.press('#room-name', 'Enter');
  await page.waitForFunction(() => document.querySelectorAll('#members tbody tr').length === 3, null, {
    timeout: WAIT,
  });
  for (const client of [alice, bob, carol]) {
    assert.equal(await page.locator(`#members tr[data-session="${client.session}"]`).count(), 1);
  }
  await page.waitForFunction(() => document.querySelectorAll('#messages tbody tr').length === 2, null, {
    timeout: WAIT,
  });
  assert.deepEqual(await page.$$eval('#messages tbody tr', (rows) => rows.map((r) => r.dataset.offset)), ['1', '2']);
  assert.match(await page.textContent('#messages tbody'), /second/);
  assert.match(await page.textContent('#room-position'), /Epoch [0-9a-f]{16} · latest offset 2/);

  // The console publishes; a real client on the other node gets it.
  assert.equal(await page.inputValue('#publish-room'), 'ops');
  await page.fill('#publish-data', '{"text": "from the console"}');
  await page.click('#publish');
  await page.waitForFunction(() => /offset 3/.test(document.querySelector('#publish-result').textContent), null, {
    timeout: WAIT,
  });
  await waitFor(() => bob.messages.some((m) => m.data?.text === 'from the console'), {
    timeoutMs: WAIT,
    what: 'the console message at a client of node-b',
  });
  await page.waitForSelector('#messages tbody tr[data-offset="3"]', { timeout: WAIT });

  // Disconnect a user from the members table: its socket closes with 1000.
  const button = page.locator(`button[data-action="user:${carol.user}"]`);
  await button.focus();
  await page.keyboard.press('Enter');
  assert.equal(await carol.closedPromise, 1000);
  await page.waitForFunction(() => /1 connection closed/.test(document.querySelector('#room-action').textContent), null, {
    timeout: WAIT,
  });
  await page.waitForFunction(() => document.querySelectorAll('#members tbody tr').length === 2, null, {
    timeout: WAIT,
  });
  await showsConnections(page, 'node-b', 1);
  assert.equal(bob.closed, null, 'another user was disconnected');

  // Every control has a label, and every text has enough contrast.
  const unlabelled = await page.$$eval('input, textarea, select, button', (controls) =>
    controls
      .filter((c) => (c.labels?.length ?? 0) === 0 && !c.getAttribute('aria-label') && !c.textContent.trim())
      .map((c) => c.outerHTML),
  );
  assert.deepEqual(unlabelled, [], 'controls without a label');
  const lowContrast = await page.evaluate(lowContrastTexts);
  assert.deepEqual(lowContrast, [], 'texts under WCAG AA contrast');

  // Charts were drawn for every series of both nodes, and say what they show.
  const charts = await page.$$eval('svg.spark', (svgs) => svgs.map((s) => s.getAttribute('aria-label')));
  assert.equal(charts.length, 8);
  assert.ok(charts.every((label) => /over the last \d+ s: now/.test(label)), charts.join('\n'));

  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });

  // Everything came from the node that served the page, and the API key
  // never reached it.
  const outside = requests.filter((url) => !url.startsWith(`${a.httpUrl}/`) && !url.startsWith('data:'));
  assert.deepEqual(outside, [], 'requests outside the node');
  assert.ok(requests.some((url) => url.endsWith('/admin/api/nodes')));
  assert.ok(!(await page.content()).includes(API_KEY));

  // Logging out brings the login form back and ends the session.
  await page.click('#logout');
  await page.waitForSelector('#login-view:not([hidden])', { timeout: WAIT });
  const status = await page.evaluate(async () => (await fetch('/admin/api/nodes')).status);
  assert.equal(status, 401);
  assert.deepEqual(problems, [], 'no page errors');
});
