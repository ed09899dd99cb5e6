// The JS client against a real gateway: run with
//   node --experimental-websocket --test clients/js/test/
// (Node 20 has a global WebSocket only with that flag.)

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import net from 'node:net';
import { test } from 'node:test';

import {
  Backoff,
  connect,
  newPublishKey,
  Positions,
  refreshDelay,
  RoomcastClient,
  RoomcastError,
} from '../roomcast.js';
import { startCluster, startRedis } from './cluster.mjs';
import { sleep, startBackend, startGateway, waitFor } from './gateway.mjs';

const FAST = { base: 50, cap: 500 };

/** Everything a client reports, in order. */
function record(client) {
  const rec = { messages: [], directs: [], states: [], presence: [], failed: [], notices: [], errors: [] };
  client.on('message', (m) => rec.messages.push(m));
  client.on('direct', (m) => rec.directs.push(m));
  client.on('state', (s) => rec.states.push(s));
  client.on('presence_join', (p) => rec.presence.push({ kind: 'join', ...p }));
  client.on('presence_leave', (p) => rec.presence.push({ kind: 'leave', ...p }));
  client.on('recovery_failed', (r) => rec.failed.push(r));
  client.on('reconnect', (r) => rec.notices.push(r));
  client.on('server_error', (e) => rec.errors.push(e));
  return rec;
}

/** A started client with its recorder; closed after the test. */
async function client(t, options) {
  const c = new RoomcastClient({ backoff: FAST, ...options });
  const rec = record(c);
  t.after(() => c.close());
  await c.connect();
  return [c, rec];
}

async function gateway(t, options) {
  const gw = await startGateway(options);
  t.after(() => gw.stop());
  return gw;
}

const texts = (messages) => messages.map((m) => m.data.text);

async function expectError(promise, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof RoomcastError, `a RoomcastError, got ${error}`);
    assert.equal(error.code, code);
    return true;
  });
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A WebSocket constructor that records every frame the client sends (parsed). */
function tappedWebSocket(sent) {
  return class TappedWebSocket extends WebSocket {
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  };
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

function jwt(secret, claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

test('join, publish, ack and the own message', async (t) => {
  const gw = await gateway(t);
  const [c, rec] = await client(t, { url: gw.wsUrl });
  assert.equal(c.state, 'connected');
  assert.deepEqual(
    rec.states.map((s) => s.state),
    ['connecting', 'connected'],
  );
  assert.equal(rec.states[1].resumed, false);
  const session = c.session;
  assert.match(session.user, /^anon-/);
  assert.ok(session.pingIntervalMs > 0);

  const joined = await c.join('lobby');
  assert.equal(joined.room, 'lobby');
  assert.equal(joined.offset, 0);
  assert.equal(typeof joined.epoch, 'string');
  assert.equal(joined.recovered, undefined);
  assert.deepEqual(c.rooms, ['lobby']);

  const offset = await c.publish('lobby', { text: 'hi' });
  assert.equal(offset, 1);
  await waitFor(() => rec.messages.length === 1, { what: 'the own message' });
  assert.deepEqual(rec.messages[0], {
    room: 'lobby',
    offset: 1,
    epoch: joined.epoch,
    data: { text: 'hi' },
    from: { user: session.user, session: session.session },
    replayed: false,
  });
  assert.equal(await c.publish('lobby', { text: 'again' }), 2);
  assert.ok((await c.ping()) >= 0);
  await waitFor(() => rec.messages.length === 2);
  assert.deepEqual(c.position('lobby'), { offset: 2, epoch: joined.epoch });
});

test('two clients exchange messages in one order', async (t) => {
  const gw = await gateway(t);
  const [a, recA] = await client(t, { url: gw.wsUrl });
  const [b, recB] = await client(t, { url: gw.wsUrl });
  await a.join('chat');
  await b.join('chat');
  const sent = [];
  for (let i = 0; i < 5; i++) {
    sent.push(await a.publish('chat', { text: `a${i}` }));
    sent.push(await b.publish('chat', { text: `b${i}` }));
  }
  assert.deepEqual(sent, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  await waitFor(() => recA.messages.length === 10 && recB.messages.length === 10, { what: '10 messages each' });
  const expected = ['a0', 'b0', 'a1', 'b1', 'a2', 'b2', 'a3', 'b3', 'a4', 'b4'];
  assert.deepEqual(texts(recA.messages), expected);
  assert.deepEqual(texts(recB.messages), expected);
  assert.deepEqual(
    recB.messages.map((m) => m.offset),
    sent,
  );
  assert.equal(recB.messages[0].from.user, a.session.user);
  assert.equal(recB.messages[1].from.user, b.session.user);
  // A message published over the HTTP API reaches both, without `from`.
  await gw.publish('chat', { text: 'backend' });
  await waitFor(() => recA.messages.length === 11 && recB.messages.length === 11);
  assert.equal(recB.messages[10].offset, 11);
  assert.equal(recB.messages[10].from, undefined);
});

test('presence list and presence events', async (t) => {
  const gw = await gateway(t);
  const [a, recA] = await client(t, { url: gw.wsUrl });
  const [b] = await client(t, { url: gw.wsUrl });
  await a.join('room', { presence: true });
  await b.join('room');
  await waitFor(() => recA.presence.length === 1, { what: 'presence_join' });
  const bMember = { user: b.session.user, session: b.session.session };
  assert.deepEqual(recA.presence[0], { kind: 'join', room: 'room', member: bMember });

  const members = await a.presence('room');
  const sessions = members.map((m) => m.session).sort();
  assert.deepEqual(sessions, [a.session.session, b.session.session].sort());

  await b.leave('room');
  assert.deepEqual(b.rooms, []);
  await waitFor(() => recA.presence.length === 2, { what: 'presence_leave' });
  assert.deepEqual(recA.presence[1], { kind: 'leave', room: 'room', member: bMember });
  assert.deepEqual(
    (await a.presence('room')).map((m) => m.session),
    [a.session.session],
  );
});

test('direct messages to a user and to a session', async (t) => {
  const gw = await gateway(t);
  const [a] = await client(t, { url: gw.wsUrl });
  const [b, recB] = await client(t, { url: gw.wsUrl });
  await a.sendToUser(b.session.user, { text: 'to the user' });
  await a.send({ session: b.session.session }, { text: 'to the session' });
  await waitFor(() => recB.directs.length === 2, { what: 'two direct messages' });
  const from = { user: a.session.user, session: a.session.session };
  assert.deepEqual(recB.directs, [
    { data: { text: 'to the user' }, from },
    { data: { text: 'to the session' }, from },
  ]);
  // Nobody there: accepted all the same (direct messages are not stored).
  await a.sendToUser('nobody', { text: 'lost' });
});

test('an error frame rejects the command with its code', async (t) => {
  const gw = await gateway(t);
  const [c, rec] = await client(t, { url: gw.wsUrl });
  await expectError(c.publish('elsewhere', { text: 'x' }), 'not_joined');
  await expectError(c.join('bad room!'), 'bad_request');
  await expectError(c.leave('never-joined'), 'not_joined');
  await expectError(c.send({}, { text: 'x' }), 'bad_request');
  assert.deepEqual(c.rooms, []);
  // The connection stays usable.
  await c.join('ok');
  assert.equal(await c.publish('ok', 1), 1);
  assert.deepEqual(
    rec.states.map((s) => s.state),
    ['connecting', 'connected'],
  );
  await c.close();
  assert.equal(c.state, 'disconnected');
  await expectError(c.publish('ok', 2), 'closed');
});

/** Starts examples/backend/backend.py; resolves to its base URL. */
async function hookBackend(t) {
  const { spawn } = await import('node:child_process');
  const { REPO } = await import('./gateway.mjs');
  const proc = spawn('python3', [`${REPO}/examples/backend/backend.py`, '--port', '0', '--slow-seconds', '3'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => proc.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    proc.on('exit', (code) => reject(new Error(`backend exited with ${code}: ${out}`)));
  });
}

test('rpc: the backend answers, its errors reject with their code', async (t) => {
  const backend = await hookBackend(t);
  const gw = await gateway(t, {
    env: { ROOMCAST_PROXY__RPC__URL: `${backend}/rpc`, ROOMCAST_PROXY__RPC__TIMEOUT_MS: '300' },
  });
  const [c] = await client(t, { url: gw.wsUrl });
  assert.deepEqual(await c.rpc('echo', { hello: ['world'] }), { hello: ['world'] });
  assert.equal(await c.rpc('math:add', { a: 20, b: 22 }), 42);
  await expectError(c.rpc('fail'), 'bad_request');
  await expectError(c.rpc('slow'), 'unavailable');
  // Still connected and usable.
  await c.join('after-rpc');
  assert.equal(await c.publish('after-rpc', 1), 1);
});

test('a dropped connection resumes: missed messages arrive once, in order', async (t) => {
  const gw = await gateway(t);
  const [a] = await client(t, { url: gw.wsUrl });
  const [b, recB] = await client(t, { url: gw.wsUrl });
  await a.join('r');
  await b.join('r', { presence: true });
  for (const text of ['m1', 'm2']) await a.publish('r', { text });
  await waitFor(() => recB.messages.length === 2);
  const session = b.session.session;

  assert.ok(b.dropConnectionForTest(800));
  assert.equal(b.state, 'reconnecting');
  assert.equal(b.stateInfo.cause.kind, 'dropped_for_test');
  await expectError(b.publish('r', { text: 'while away' }), 'disconnected');
  for (const text of ['m3', 'm4', 'm5']) await a.publish('r', { text });
  await gw.publish('r', { text: 'm6' });

  await b.waitConnected();
  const connected = recB.states.at(-1);
  assert.equal(connected.resumed, true);
  assert.equal(b.session.session, session, 'the same session');
  assert.deepEqual(connected.restored, { resumed: ['r'], rejoined: [] });
  await a.publish('r', { text: 'm7' });
  await waitFor(() => recB.messages.length === 7, { what: 'seven messages' });
  await sleep(100);
  assert.deepEqual(texts(recB.messages), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7']);
  assert.deepEqual(
    recB.messages.map((m) => m.offset),
    [1, 2, 3, 4, 5, 6, 7],
  );
  assert.deepEqual(
    recB.messages.map((m) => m.replayed),
    [false, false, true, true, true, true, false],
  );
  assert.deepEqual(recB.failed, []);
  // The resumed room still has presence events.
  const [c] = await client(t, { url: gw.wsUrl });
  await c.join('r');
  await waitFor(() => recB.presence.some((p) => p.member.session === c.session.session), { what: 'presence_join' });
});

test('an expired session: the rooms are joined again with since and recovered', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_SESSION__TTL_MS: '100' } });
  const [a] = await client(t, { url: gw.wsUrl });
  const [b, recB] = await client(t, { url: gw.wsUrl });
  await a.join('r');
  await b.join('r');
  await a.publish('r', { text: 'm1' });
  await waitFor(() => recB.messages.length === 1);
  const oldSession = b.session.session;

  b.dropConnectionForTest(1200);
  for (const text of ['m2', 'm3', 'm4']) await a.publish('r', { text });
  await b.waitConnected();
  const connected = recB.states.at(-1);
  assert.equal(connected.resumed, false);
  assert.notEqual(b.session.session, oldSession);
  assert.deepEqual(connected.restored, { resumed: [], rejoined: ['r'] });
  await waitFor(() => recB.messages.length === 4, { what: 'the replay' });
  await a.publish('r', { text: 'm5' });
  await waitFor(() => recB.messages.length === 5, { what: 'five messages' });
  await sleep(100);
  assert.deepEqual(texts(recB.messages), ['m1', 'm2', 'm3', 'm4', 'm5']);
  assert.deepEqual(
    recB.messages.map((m) => m.replayed),
    [false, true, true, true, false],
  );
  assert.deepEqual(recB.failed, [], 'history had everything');
});

test('a restarted node: new epoch, recovery_failed, then live messages again', async (t) => {
  let gw = await startGateway();
  t.after(() => gw.stop());
  const [a, recA] = await client(t, { url: gw.wsUrl });
  const [b, recB] = await client(t, { url: gw.wsUrl });
  const first = await a.join('r');
  await b.join('r');
  for (const text of ['before1', 'before2', 'before3']) await a.publish('r', { text });
  await waitFor(() => recB.messages.length === 3);

  await gw.stop('SIGKILL');
  const down = (rec) => rec.states.find((s) => s.state === 'reconnecting');
  await waitFor(() => down(recA) && down(recB), { what: 'both reconnecting' });
  assert.equal(down(recA).cause.kind, 'lost');
  await expectError(a.publish('r', { text: 'nowhere' }), 'disconnected');
  gw = await gw.restart();

  await Promise.all([a.waitConnected(), b.waitConnected()]);
  for (const rec of [recA, recB]) {
    const connected = rec.states.filter((s) => s.state === 'connected').at(-1);
    assert.equal(connected.resumed, false, 'the new node knows no session');
    assert.deepEqual(connected.restored.rejoined, ['r']);
  }
  await waitFor(() => recA.failed.length === 1 && recB.failed.length === 1, { what: 'recovery_failed' });
  const epoch = recB.failed[0].epoch;
  assert.notEqual(epoch, first.epoch, 'a new epoch');
  assert.deepEqual(recB.failed[0], { room: 'r', offset: 0, epoch });

  // Offsets start again at 1 in the new epoch and are not taken for duplicates.
  assert.equal(await a.publish('r', { text: 'after1' }), 1);
  assert.equal(await b.publish('r', { text: 'after2' }), 2);
  await waitFor(() => recA.messages.length === 5 && recB.messages.length === 5, { what: 'five messages each' });
  await sleep(100);
  for (const rec of [recA, recB]) {
    assert.deepEqual(texts(rec.messages), ['before1', 'before2', 'before3', 'after1', 'after2']);
    assert.deepEqual(
      rec.messages.map((m) => [m.epoch === epoch, m.offset]),
      [
        [false, 1],
        [false, 2],
        [false, 3],
        [true, 1],
        [true, 2],
      ],
    );
  }
  assert.deepEqual(a.position('r'), { offset: 2, epoch });
});

test('a draining node: the reconnect notice sets the delay, the client comes back', async (t) => {
  let gw = await startGateway({ env: { ROOMCAST_DRAIN__WINDOW_MS: '200', ROOMCAST_DRAIN__TIMEOUT_MS: '3000' } });
  t.after(() => gw.stop());
  const [c, rec] = await client(t, { url: gw.wsUrl });
  await c.join('r');
  await gw.stop('SIGTERM');
  await waitFor(() => rec.notices.length === 1, { what: 'the reconnect notice' });
  assert.equal(rec.notices[0].reason, 'shutdown');
  const reconnecting = rec.states.find((s) => s.state === 'reconnecting');
  assert.equal(reconnecting.cause.kind, 'closed');
  assert.equal(reconnecting.cause.code, 1012);
  assert.equal(reconnecting.delay, rec.notices[0].afterMs);
  gw = await gw.restart();
  await c.waitConnected();
  await waitFor(() => c.rooms.includes('r') && c.position('r'), { what: 'the room back' });
  assert.equal(await c.publish('r', { text: 'back' }), 1);
});

test('heartbeat watchdog: probes keep a quiet connection, silence replaces it', async (t) => {
  const gw = await gateway(t, {
    env: { ROOMCAST_HEARTBEAT__PING_INTERVAL_MS: '300', ROOMCAST_HEARTBEAT__PONG_TIMEOUT_MS: '2000' },
  });
  t.after(() => gw.resume());
  const [c, rec] = await client(t, { url: gw.wsUrl, heartbeatSlack: 200, connectTimeout: 1000 });
  assert.equal(c.session.pingIntervalMs, 300);
  await c.join('r');
  await sleep(1500); // five intervals without traffic: the probes answer
  assert.deepEqual(
    rec.states.map((s) => s.state),
    ['connecting', 'connected'],
  );

  gw.pause(); // the socket stays open but nothing arrives any more
  const frozen = Date.now();
  // From the recorded transitions, not the current state: with a backoff
  // delay of a few ms the client may already be connecting again (and
  // then fail to connect to the paused node) by the time a poll looks.
  await waitFor(() => rec.states.some((s) => s.state === 'reconnecting'), {
    timeoutMs: 4000,
    what: 'the watchdog',
  });
  const noticed = Date.now() - frozen;
  assert.equal(rec.states.find((s) => s.state === 'reconnecting').cause.kind, 'heartbeat');
  assert.ok(noticed >= 400 && noticed < 2500, `noticed after ${noticed} ms`);
  gw.resume();
  await c.waitConnected();
  assert.equal(rec.states.filter((s) => s.state === 'connected').at(-1).resumed, true);
});

test('several URLs: a dead one is skipped', async (t) => {
  const gw = await gateway(t);
  const dead = `ws://127.0.0.1:${await freePort()}/ws`;
  const [c, rec] = await client(t, { urls: [dead, gw.wsUrl] });
  assert.equal(c.session.url, gw.wsUrl);
  const kinds = rec.states.map((s) => (s.state === 'reconnecting' ? `${s.state}:${s.cause.kind}` : s.state));
  assert.deepEqual(kinds, ['connecting', 'reconnecting:connect_failed', 'connecting', 'connected']);
  assert.equal(rec.states[0].url, dead);
  assert.equal(rec.states[2].attempt, 2);
});

test('tokens: a callback is asked at every connection, a refused token stops the client', async (t) => {
  const secret = 'test-secret-test-secret-test-secret';
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: secret } });
  const exp = Math.floor(Date.now() / 1000) + 600;
  let asked = 0;
  const [c] = await client(t, {
    url: gw.wsUrl,
    getToken: async () => {
      asked += 1;
      return jwt(secret, { sub: 'alice', exp, rooms: ['*'] });
    },
  });
  assert.equal(c.session.user, 'alice');
  assert.equal(asked, 1);
  c.dropConnectionForTest(0);
  await c.waitConnected();
  assert.equal(asked, 2);
  assert.equal(c.stateInfo.resumed, true);

  const fixed = new RoomcastClient({ url: gw.wsUrl, token: jwt('wrong', { sub: 'eve', exp }), backoff: FAST });
  const recFixed = record(fixed);
  await expectError(fixed.connect(), 'unauthorized');
  assert.equal(fixed.state, 'disconnected');
  assert.equal(recFixed.states.filter((s) => s.state === 'connecting').length, 1, 'a fixed token is tried once');

  let refused = 0;
  const provided = new RoomcastClient({
    url: gw.wsUrl,
    backoff: FAST,
    getToken: () => {
      refused += 1;
      return jwt('wrong', { sub: 'eve', exp });
    },
  });
  await expectError(provided.connect(), 'unauthorized');
  assert.equal(refused, 2, 'a callback gets one more chance');
});

test('a client that cannot connect gives up after maxAttempts', async () => {
  const dead = `ws://127.0.0.1:${await freePort()}/ws`;
  const c = new RoomcastClient({ url: dead, backoff: { base: 10, cap: 20, maxAttempts: 3 } });
  const rec = record(c);
  await expectError(c.connect(), 'gave_up');
  assert.equal(rec.states.filter((s) => s.state === 'connecting').length, 3);
  assert.equal(c.state, 'disconnected');
  assert.equal(c.stateInfo.error.code, 'gave_up');
});

test('connect() helper and a missing WebSocket constructor', async (t) => {
  const gw = await gateway(t);
  const c = await connect({ url: gw.wsUrl });
  t.after(() => c.close());
  assert.equal(c.state, 'connected');
  assert.throws(() => new RoomcastClient({ url: gw.wsUrl, WebSocket: {} }), TypeError);
  assert.throws(() => new RoomcastClient({ url: 'http://example.invalid/ws', WebSocket: class {} }), TypeError);
});

test('backoff: exponential ceiling, full jitter, attempt limit', () => {
  const b = new Backoff({ base: 100, cap: 2000, maxAttempts: 5 });
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((n) => b.ceiling(n)),
    [100, 200, 400, 800, 1600, 2000, 2000, 2000],
  );
  assert.equal(b.ceiling(100_000), 2000);
  assert.equal(b.delay(3, () => 0), 0);
  assert.equal(b.delay(3, () => 0.5), 400);
  const samples = Array.from({ length: 4000 }, () => b.delay(3) / 800);
  assert.ok(Math.min(...samples) < 0.02 && Math.max(...samples) > 0.98);
  const mean = samples.reduce((x, y) => x + y) / samples.length;
  assert.ok(mean > 0.45 && mean < 0.55, `mean ${mean}`);
  assert.ok(!b.exhausted(4) && b.exhausted(5));
  assert.ok(!new Backoff().exhausted(1e9));
  assert.equal(new Backoff({ base: 0 }).delay(5), 0);
});

test('positions: duplicates dropped per room, reset by a new epoch', () => {
  const p = new Positions();
  const delivered = (room, epoch, offsets) => offsets.filter((o) => p.admit(room, epoch, o) !== 'duplicate');
  assert.deepEqual(delivered('r', 'e1', [1, 2, 3, 2, 3, 4, 1, 5, 5]), [1, 2, 3, 4, 5]);
  assert.deepEqual(delivered('other', 'e1', [1, 2]), [1, 2]);
  assert.equal(p.admit('r', 'e2', 1), 'restart');
  assert.deepEqual(delivered('r', 'e2', [1, 2]), [2]);
  p.advanceTo('r', { offset: 10, epoch: 'e2' });
  p.advanceTo('r', { offset: 4, epoch: 'e2' });
  assert.deepEqual(p.get('r'), { offset: 10, epoch: 'e2' });
  p.replayFrom('r', { offset: 3, epoch: 'e2' });
  assert.deepEqual(delivered('r', 'e2', [4, 10, 11]), [11]);
  p.replayFrom('r', { offset: 3, epoch: 'e3' });
  assert.deepEqual(delivered('r', 'e3', [3, 4]), [4]);
  p.remove('r');
  assert.equal(p.get('r'), undefined);
});

// ---- idempotent publish ------------------------------------------------------

test('every publish carries a key; the same key again is acked as a duplicate and stored once', async (t) => {
  const gw = await gateway(t);
  const sent = [];
  const [c] = await client(t, { url: gw.wsUrl, WebSocket: tappedWebSocket(sent) });
  const [reader, recReader] = await client(t, { url: gw.wsUrl });
  await c.join('keys');
  await reader.join('keys');

  assert.equal(await c.publish('keys', { text: 'one' }), 1);
  const first = await c.publishAck('keys', { text: 'two' });
  assert.equal(first.offset, 2);
  assert.equal(first.duplicate, false);
  const publishes = sent.filter((f) => f.type === 'publish');
  assert.equal(publishes.length, 2);
  for (const frame of publishes) assert.match(frame.key, /^[A-Za-z0-9_-]{22}$/);
  assert.notEqual(publishes[0].key, publishes[1].key, 'a fresh key per publish');
  assert.equal(publishes[1].key, first.key);

  // The caller's own key: the first is stored, the repeat (other data) is not.
  const own = await c.publishAck('keys', { text: 'three' }, { key: 'order-42:a.b_c-d' });
  assert.deepEqual(own, { offset: 3, duplicate: false, key: 'order-42:a.b_c-d' });
  const again = await c.publishAck('keys', { text: 'three, again' }, { key: 'order-42:a.b_c-d' });
  assert.deepEqual(again, { offset: 3, duplicate: true, key: 'order-42:a.b_c-d' });
  assert.equal(await c.publish('keys', { text: 'three, once more' }, { key: 'order-42:a.b_c-d' }), 3);
  await expectError(c.publish('keys', 1, { key: 'not a key!' }), 'bad_request');
  await expectError(c.publish('keys', 1, { key: 'x'.repeat(65) }), 'bad_request');

  const history = await gw.history('keys');
  assert.deepEqual(
    history.messages.map((m) => [m.offset, m.data.text]),
    [
      [1, 'one'],
      [2, 'two'],
      [3, 'three'],
    ],
  );
  await waitFor(() => recReader.messages.length === 3, { what: 'three messages' });
  await sleep(200);
  assert.deepEqual(texts(recReader.messages), ['one', 'two', 'three']);
  const keys = new Set(Array.from({ length: 1000 }, () => newPublishKey()));
  assert.equal(keys.size, 1000);
});

test('a publish in flight when the connection drops is sent again with its key and stored once', async (t) => {
  const gw = await gateway(t);
  t.after(() => gw.resume());
  const sent = [];
  const [c, rec] = await client(t, { url: gw.wsUrl, WebSocket: tappedWebSocket(sent), connectTimeout: 3000 });
  const [reader, recReader] = await client(t, { url: gw.wsUrl });
  await c.join('fragile');
  await reader.join('fragile');
  const sessionBefore = c.session.session;

  // A frozen node takes the frame into its socket buffer but does not answer.
  gw.pause();
  await sleep(100);
  const inFlight = c.publishAck('fragile', { text: 'exactly once' });
  let settled = false;
  inFlight.then(
    () => (settled = true),
    () => (settled = true),
  );
  await sleep(200);
  assert.ok(c.dropConnectionForTest(200));
  await sleep(300);
  assert.equal(settled, false, 'still pending across the drop');
  // Thawed, the node reads the first copy from the old socket; the client,
  // back on a new connection, sends the second one with the same key.
  gw.resume();
  const ack = await inFlight;
  assert.equal(ack.offset, 1);
  assert.equal(c.session.session, sessionBefore, 'the session was resumed');
  assert.ok(rec.states.some((s) => s.state === 'reconnecting'));

  const copies = sent.filter((f) => f.type === 'publish');
  assert.equal(copies.length, 2, 'sent twice');
  assert.equal(copies[0].key, copies[1].key, 'with the same key');
  assert.notEqual(copies[0].id, copies[1].id, 'under a fresh id');
  assert.equal(copies[1].key, ack.key);

  const history = await gw.history('fragile');
  assert.deepEqual(
    history.messages.map((m) => m.data.text),
    ['exactly once'],
    'stored once',
  );
  assert.equal(await gw.metric('roomcast_publish_duplicates_total'), 1, 'the node saw both copies');
  await waitFor(() => recReader.messages.length === 1, { what: 'the message at the reader' });
  await c.publish('fragile', { text: 'next' });
  await waitFor(() => recReader.messages.length === 2, { what: 'the next message' });
  assert.deepEqual(texts(recReader.messages), ['exactly once', 'next'], 'delivered once');
});

test('a publish answered unavailable is retried with its key and stored once', async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop());
  const gw = await gateway(t, {
    env: {
      ROOMCAST_REDIS__URL: redis.url,
      ROOMCAST_REDIS__COMMAND_TIMEOUT_MS: '300',
      ROOMCAST_AUTH__RESUME_SECRET: 'js-unavailable-test-secret',
    },
  });
  t.after(() => redis.resume());
  const sent = [];
  const [c] = await client(t, {
    url: gw.wsUrl,
    WebSocket: tappedWebSocket(sent),
    requestTimeout: 10_000,
    publishAttempts: 20,
  });
  const [reader, recReader] = await client(t, { url: gw.wsUrl });
  await c.join('flaky');
  await reader.join('flaky');
  // The first publish loads the node's publish script into Redis.
  assert.equal(await c.publish('flaky', { text: 'warm-up' }), 1);

  redis.pause(); // the node's commands time out: `unavailable`
  await sleep(50);
  const pending = c.publishAck('flaky', { text: 'once' });
  const copies = () => sent.filter((f) => f.type === 'publish' && f.data.text === 'once');
  await waitFor(() => copies().length >= 2, { timeoutMs: 5000, what: 'a retry after unavailable' });
  redis.resume();
  const ack = await pending;
  assert.equal(ack.offset, 2);
  // Redis ran the first copy's script once thawed: `unavailable` had not
  // meant "not stored", and the retry was answered as a duplicate.
  assert.equal(ack.duplicate, true);
  assert.equal(await gw.metric('roomcast_publish_duplicates_total'), 1);
  assert.ok(copies().every((f) => f.key === ack.key), 'every retry with the same key');
  assert.equal(new Set(copies().map((f) => f.id)).size, copies().length, 'each under its own id');

  const history = await gw.history('flaky');
  assert.deepEqual(
    history.messages.map((m) => m.data.text),
    ['warm-up', 'once'],
    'stored once',
  );
  await waitFor(() => recReader.messages.length === 2, { what: 'both messages at the reader' });
  await c.publish('flaky', { text: 'after' });
  await waitFor(() => recReader.messages.length === 3, { what: 'the next message' });
  assert.deepEqual(texts(recReader.messages), ['warm-up', 'once', 'after'], 'delivered once');
});

test('a publish still unanswered after requestTimeout rejects with timeout and is not sent again', async (t) => {
  const gw = await gateway(t);
  t.after(() => gw.resume());
  const sent = [];
  const [c] = await client(t, {
    url: gw.wsUrl,
    WebSocket: tappedWebSocket(sent),
    requestTimeout: 600,
    connectTimeout: 5000,
  });
  await c.join('slow');
  gw.pause();
  await sleep(100);
  const started = Date.now();
  await expectError(c.publish('slow', { text: 'late' }), 'timeout');
  assert.ok(Date.now() - started < 2000);
  gw.resume();
  assert.equal(await c.publish('slow', { text: 'after' }), 2, 'the first was stored all the same');
  assert.equal(sent.filter((f) => f.type === 'publish').length, 2);
});

// ---- token refresh -----------------------------------------------------------

const SECRET = 'test-secret-test-secret-test-secret';

test('refresh: a 4 s token is refreshed before it expires and the connection outlives it', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  const asked = [];
  const sent = [];
  const [c, rec] = await client(t, {
    url: gw.wsUrl,
    WebSocket: tappedWebSocket(sent),
    getToken: ({ reason }) => {
      asked.push(reason);
      return jwt(SECRET, { sub: 'alice', exp: nowSeconds() + 4, rooms: ['*'] });
    },
  });
  const refreshed = [];
  const failed = [];
  c.on('token_refreshed', (e) => refreshed.push(e));
  c.on('token_refresh_failed', (e) => failed.push(e));
  const firstExpiry = c.tokenExpiresAt;
  assert.equal(typeof firstExpiry, 'number', 'welcome has token_expires_at');
  assert.ok(Math.abs(firstExpiry - (nowSeconds() + 4)) <= 1, `expires at ${firstExpiry}`);
  await c.join('r');

  // Past the first token's expiry plus the node's leeway (at most 5 s).
  await sleep(firstExpiry * 1000 + 6500 - Date.now());
  assert.deepEqual(failed, []);
  assert.deepEqual(
    rec.states.map((s) => s.state),
    ['connecting', 'connected'],
    'never disconnected',
  );
  assert.ok(refreshed.length >= 2, `${refreshed.length} refreshes`);
  assert.equal(asked[0], 'connect');
  assert.ok(asked.slice(1).every((r) => r === 'refresh'));
  assert.ok(c.tokenExpiresAt > firstExpiry);
  assert.equal(refreshed.at(-1).expiresAt, c.tokenExpiresAt);
  const refreshes = sent.filter((f) => f.type === 'refresh');
  assert.equal(refreshes.length, refreshed.length);
  assert.ok(refreshes.every((f) => typeof f.token === 'string' && typeof f.id === 'number'));
  assert.equal(await c.publish('r', { text: 'still here' }), 1);
});

test('refresh: without getToken an expiring token ends the connection with 4401 and the client says so', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  const exp = nowSeconds() + 3;
  const [c, rec] = await client(t, { url: gw.wsUrl, token: jwt(SECRET, { sub: 'bob', exp, rooms: ['*'] }) });
  assert.equal(c.tokenExpiresAt, exp);
  await waitFor(() => c.state === 'disconnected', { timeoutMs: 15_000, what: 'the 4401 close' });
  const error = c.stateInfo.error;
  assert.equal(error.code, 'unauthorized');
  assert.equal(error.cause.kind, 'closed');
  assert.equal(error.cause.code, 4401);
  assert.equal(error.cause.reason, 'token expired');
  assert.ok(Date.now() / 1000 >= exp, 'not before the token expired');
  assert.deepEqual(
    rec.states.map((s) => s.state),
    ['connecting', 'connected', 'disconnected'],
  );
});

test('refresh: a token that allows fewer rooms takes the client out of them; a wrong token changes nothing', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  let claims = { sub: 'carol', rooms: ['keep', 'drop'] };
  let token = null;
  const sent = [];
  const [c, rec] = await client(t, {
    url: gw.wsUrl,
    WebSocket: tappedWebSocket(sent),
    getToken: () => token ?? jwt(SECRET, { ...claims, exp: nowSeconds() + 600 }),
  });
  const left = [];
  c.on('left', (e) => left.push(e));
  await c.join('keep');
  await c.join('drop');
  assert.deepEqual(c.rooms, ['drop', 'keep']);

  claims = { sub: 'carol', rooms: ['keep'] };
  const expiresAt = await c.refreshToken();
  assert.ok(expiresAt >= nowSeconds() + 590);
  assert.equal(c.tokenExpiresAt, expiresAt);
  await waitFor(() => left.length === 1, { what: 'left' });
  assert.deepEqual(left, [{ room: 'drop', reason: 'forbidden' }]);
  assert.deepEqual(c.rooms, ['keep']);
  assert.equal(c.position('drop'), undefined);
  await expectError(c.publish('drop', { text: 'x' }), 'not_joined');

  // Another user's token: forbidden; a bad one: unauthorized. The old expiry stands.
  token = jwt(SECRET, { sub: 'mallory', exp: nowSeconds() + 900, rooms: ['*'] });
  await expectError(c.refreshToken(), 'forbidden');
  token = jwt('not-the-secret', { sub: 'carol', exp: nowSeconds() + 900, rooms: ['*'] });
  await expectError(c.refreshToken(), 'unauthorized');
  assert.equal(c.tokenExpiresAt, expiresAt);
  assert.equal(c.state, 'connected');
  token = null;

  // After a reconnect the forgotten room is not asked for again.
  c.dropConnectionForTest(50);
  await c.waitConnected();
  const hello = sent.filter((f) => f.type === 'hello').at(-1);
  assert.deepEqual(
    hello.resume.rooms.map((r) => r.room),
    ['keep'],
  );
  assert.equal(rec.states.at(-1).resumed, true);
  assert.deepEqual(c.rooms, ['keep']);
  assert.equal(
    sent.filter((f) => f.type === 'join' && f.room === 'drop').length,
    1,
    'drop never joined again',
  );
});

test('refresh: when the node answers 4401 at expiry, a getToken client reconnects with a fresh token', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  let refuse = true;
  const [c, rec] = await client(t, {
    url: gw.wsUrl,
    getToken: ({ reason }) => {
      // Every refresh gets a token for another user (refused: forbidden),
      // so the first token runs out.
      if (reason === 'refresh' && refuse) return jwt(SECRET, { sub: 'mallory', exp: nowSeconds() + 60, rooms: ['*'] });
      return jwt(SECRET, { sub: 'dave', exp: nowSeconds() + 3, rooms: ['*'] });
    },
  });
  const failed = [];
  c.on('token_refresh_failed', (e) => {
    failed.push(e);
    if (e.final) refuse = false;
  });
  await c.join('r');
  await waitFor(() => rec.states.some((s) => s.state === 'reconnecting'), { timeoutMs: 15_000, what: 'the 4401 close' });
  const down = rec.states.find((s) => s.state === 'reconnecting');
  assert.equal(down.cause.code, 4401);
  assert.equal(down.cause.reason, 'token expired');
  assert.ok(failed.length >= 1 && failed.every((f) => f.error.code === 'forbidden'));
  assert.ok(failed.at(-1).final);
  await c.waitConnected();
  assert.equal(c.session.user, 'dave');
  assert.ok(c.rooms.includes('r'));
  assert.equal(await c.publish('r', { text: 'back' }), 1);
});

test('refreshDelay: 80 % of the lifetime, at least the margin before expiry', () => {
  assert.equal(refreshDelay(100_000), 80_000);
  assert.equal(refreshDelay(3_600_000), 2_880_000);
  assert.equal(refreshDelay(20_000), 15_000);
  assert.equal(refreshDelay(4_000), 2_000);
  assert.equal(refreshDelay(0), 0);
  assert.equal(refreshDelay(-5), 0);
});

// ---- server-side subscriptions and the refresh proxy ---------------------------

/** A client with a fixed token, recording its frames sent and its joined events. */
async function subscribedClient(t, gw, claims) {
  const sent = [];
  const c = new RoomcastClient({
    url: gw.wsUrl,
    backoff: FAST,
    WebSocket: tappedWebSocket(sent),
    token: jwt(SECRET, { exp: nowSeconds() + 600, ...claims }),
  });
  t.after(() => c.close());
  // Listening before connect(): the joined frames follow welcome at once.
  const rec = record(c);
  rec.joined = [];
  rec.left = [];
  c.on('joined', (e) => rec.joined.push(e));
  c.on('left', (e) => rec.left.push(e));
  await c.connect();
  return [c, rec, sent];
}

test('subs: a joined without id is a room of the client, resumed after a dropped socket with the missed message once', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  // No `rooms` claim: the client may be in user:alice only because the node put it there.
  const [c, rec, sent] = await subscribedClient(t, gw, { sub: 'alice', subs: ['user:alice'] });
  await waitFor(() => rec.joined.length === 1, { what: 'the server-side join' });
  const [joined] = rec.joined;
  assert.equal(typeof joined.epoch, 'string');
  assert.deepEqual(joined, { room: 'user:alice', offset: 0, epoch: joined.epoch, server: true });
  assert.deepEqual(c.rooms, ['user:alice']);

  await gw.publish('user:alice', { text: 'm1' });
  await waitFor(() => rec.messages.length === 1, { what: 'm1' });
  assert.deepEqual(c.position('user:alice'), { offset: 1, epoch: joined.epoch });
  const session = c.session.session;

  assert.ok(c.dropConnectionForTest(800));
  await gw.publish('user:alice', { text: 'm2 while away' });
  await c.waitConnected();
  const hello = sent.filter((f) => f.type === 'hello').at(-1);
  assert.deepEqual(hello.resume.rooms, [{ room: 'user:alice', offset: 1, epoch: joined.epoch }]);
  const connected = rec.states.at(-1);
  assert.equal(connected.resumed, true);
  assert.equal(c.session.session, session);
  assert.deepEqual(connected.restored, { resumed: ['user:alice'], rejoined: [] });

  await gw.publish('user:alice', { text: 'm3' });
  await waitFor(() => rec.messages.length === 3, { what: 'm2 and m3' });
  await sleep(200);
  assert.deepEqual(texts(rec.messages), ['m1', 'm2 while away', 'm3']);
  assert.deepEqual(
    rec.messages.map((m) => [m.offset, m.replayed]),
    [
      [1, false],
      [2, true],
      [3, false],
    ],
  );
  assert.deepEqual(rec.failed, []);
  assert.equal(rec.joined.length, 1, 'a resumed room is not announced again');
  assert.equal(sent.filter((f) => f.type === 'join').length, 0, 'the client never asked to join');
});

test('subs: the node is killed, the client resumes on another node of the cluster and gets the missed message once', async (t) => {
  const cluster = await startCluster(['subs-a', 'subs-b'], { ROOMCAST_AUTH__JWT_SECRET: SECRET });
  t.after(() => cluster.stop());
  const [a, b] = cluster.gateways;
  const c = new RoomcastClient({
    urls: [a.wsUrl, b.wsUrl],
    backoff: FAST,
    token: jwt(SECRET, { sub: 'dora', exp: nowSeconds() + 600, subs: ['user:dora'] }),
  });
  t.after(() => c.close());
  const rec = record(c);
  const joined = [];
  c.on('joined', (e) => joined.push(e));
  await c.connect();
  assert.equal(c.session.url, a.wsUrl);
  await waitFor(() => joined.length === 1, { what: 'the server-side join' });
  await a.publish('user:dora', { text: 'm1' });
  await waitFor(() => rec.messages.length === 1, { what: 'm1' });

  // The node tells the presence service about the session in the
  // background; give it a moment before the crash (see the Rust client's
  // server_side.rs for what happens sooner).
  await sleep(1000);
  await a.stop('SIGKILL');
  await b.publish('user:dora', { text: 'm2 while away' });
  await c.waitConnected();
  assert.equal(c.session.url, b.wsUrl);
  assert.equal(rec.states.at(-1).resumed, true);
  assert.deepEqual(rec.states.at(-1).restored, { resumed: ['user:dora'], rejoined: [] });
  await b.publish('user:dora', { text: 'm3' });
  await waitFor(() => rec.messages.length === 3, { what: 'm2 and m3' });
  await sleep(200);
  assert.deepEqual(
    rec.messages.map((m) => [m.offset, m.data.text, m.replayed]),
    [
      [1, 'm1', false],
      [2, 'm2 while away', true],
      [3, 'm3', false],
    ],
  );
  assert.equal(joined.length, 1);
  assert.deepEqual(rec.failed, []);
});

test('subs: after a session that could not be resumed, the room is joined again by the node and the gap reported', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET, ROOMCAST_SESSION__TTL_MS: '100' } });
  const [c, rec, sent] = await subscribedClient(t, gw, { sub: 'cleo', subs: ['user:cleo'] });
  await waitFor(() => rec.joined.length === 1, { what: 'the server-side join' });
  await gw.publish('user:cleo', { text: 'm1' });
  await waitFor(() => rec.messages.length === 1, { what: 'm1' });

  c.dropConnectionForTest(1200);
  await gw.publish('user:cleo', { text: 'm2 while away' });
  await c.waitConnected();
  assert.equal(rec.states.at(-1).resumed, false);
  await waitFor(() => rec.joined.length === 2, { what: 'the second server-side join' });
  assert.deepEqual(rec.joined[1], { room: 'user:cleo', offset: 2, epoch: rec.joined[0].epoch, server: true });
  // A server-side join replays nothing: the gap is reported. The client's
  // own join with since (refused: the token has no rooms claim) does not
  // take the room away.
  await waitFor(() => rec.failed.length === 1, { what: 'recovery_failed' });
  assert.deepEqual(rec.failed, [{ room: 'user:cleo', offset: 2, epoch: rec.joined[0].epoch }]);
  await c.ping();
  assert.deepEqual(c.rooms, ['user:cleo']);
  await gw.publish('user:cleo', { text: 'm3' });
  await waitFor(() => rec.messages.length === 2, { what: 'm3' });
  await sleep(200);
  assert.deepEqual(texts(rec.messages), ['m1', 'm3']);
  assert.ok(sent.some((f) => f.type === 'join' && f.room === 'user:cleo' && f.since?.offset === 1));
});

test('subs: a room the application left stays left after a reconnect, the others stay', async (t) => {
  const gw = await gateway(t, { env: { ROOMCAST_AUTH__JWT_SECRET: SECRET } });
  const [c, rec, sent] = await subscribedClient(t, gw, { sub: 'bea', subs: ['user:bea', 'news:all'] });
  await waitFor(() => rec.joined.length === 2, { what: 'two server-side joins' });
  assert.deepEqual(c.rooms, ['news:all', 'user:bea']);
  await c.leave('news:all');
  assert.deepEqual(c.rooms, ['user:bea']);
  assert.equal(c.position('news:all'), undefined);

  // The node subscribes the resumed connection to its token's rooms again;
  // the client leaves news:all again by itself.
  c.dropConnectionForTest(50);
  await c.waitConnected();
  assert.equal(rec.states.at(-1).resumed, true);
  assert.deepEqual(
    sent.filter((f) => f.type === 'hello').at(-1).resume.rooms.map((r) => r.room),
    ['user:bea'],
  );
  await waitFor(() => sent.filter((f) => f.type === 'leave' && f.room === 'news:all').length === 2, {
    what: 'the second leave',
  });
  await c.ping(); // the leave is answered before the ping
  await gw.publish('news:all', { text: 'not for bea' });
  await gw.publish('user:bea', { text: 'for bea' });
  await waitFor(() => rec.messages.length === 1, { what: 'the message to user:bea' });
  await sleep(200);
  assert.deepEqual(
    rec.messages.map((m) => [m.room, m.data.text]),
    [['user:bea', 'for bea']],
  );
  assert.deepEqual(c.rooms, ['user:bea']);
  assert.deepEqual(rec.joined.map((j) => j.room).sort(), ['news:all', 'user:bea']);
  assert.deepEqual(rec.left, []);
});

test('refresh proxy: a refreshed without id moves the known expiry, and the connection outlives the first exp', async (t) => {
  const backend = await startBackend();
  t.after(() => backend.stop());
  const gw = await gateway(t, {
    env: {
      ROOMCAST_AUTH__JWT_SECRET: SECRET,
      ROOMCAST_PROXY__REFRESH__URL: `${backend.httpUrl}/refresh`,
      ROOMCAST_PROXY__REFRESH_AHEAD_MS: '2500',
    },
  });
  const exp = nowSeconds() + 3;
  const sent = [];
  // A fixed token and no getToken: only the node can extend it.
  const [c, rec] = await client(t, {
    url: gw.wsUrl,
    WebSocket: tappedWebSocket(sent),
    token: jwt(SECRET, { sub: 'frank', exp, rooms: ['*'] }),
  });
  const refreshed = [];
  c.on('token_refreshed', (e) => refreshed.push(e));
  assert.equal(c.tokenExpiresAt, exp);
  await c.join('r');
  await waitFor(() => refreshed.length === 1, { timeoutMs: 10_000, what: "the node's refresh" });
  assert.equal(refreshed[0].server, true);
  assert.ok(refreshed[0].expiresAt >= nowSeconds() + 55, `expires at ${refreshed[0].expiresAt}`);
  assert.equal(c.tokenExpiresAt, refreshed[0].expiresAt);

  // Past the first exp plus the node's leeway (at most 5 s).
  await sleep(exp * 1000 + 6000 - Date.now());
  assert.equal(c.state, 'connected');
  assert.deepEqual(
    rec.states.map((s) => s.state),
    ['connecting', 'connected'],
    'never disconnected',
  );
  assert.equal(c.tokenExpiresAt, refreshed[0].expiresAt);
  assert.equal(sent.filter((f) => f.type === 'refresh').length, 0, 'the client sent no refresh');
  assert.equal(await c.publish('r', { text: 'still here' }), 1);
  assert.equal(refreshed.length, 1);
});

test("refresh proxy: with getToken, the node's refresh postpones the client's own", async (t) => {
  const backend = await startBackend();
  t.after(() => backend.stop());
  const gw = await gateway(t, {
    env: {
      ROOMCAST_AUTH__JWT_SECRET: SECRET,
      ROOMCAST_PROXY__REFRESH__URL: `${backend.httpUrl}/refresh`,
      ROOMCAST_PROXY__REFRESH_AHEAD_MS: '2500',
      // The node's connection timers tick at a quarter of this (500 ms), so
      // its refresh comes at most that late.
      ROOMCAST_HEARTBEAT__PING_INTERVAL_MS: '2000',
    },
  });
  const asked = [];
  const sent = [];
  // The client alone would refresh this 4 s token 3.2 s in (refreshMargin
  // 500 ms); the node extends it 2.5 s before its exp, 1.5 to 2 s in.
  const [c] = await client(t, {
    url: gw.wsUrl,
    WebSocket: tappedWebSocket(sent),
    refreshMargin: 500,
    getToken: ({ reason }) => {
      asked.push(reason);
      return jwt(SECRET, { sub: 'gus', exp: nowSeconds() + 4, rooms: ['*'] });
    },
  });
  const refreshed = [];
  c.on('token_refreshed', (e) => refreshed.push(e));
  const exp = c.tokenExpiresAt;
  await sleep(exp * 1000 + 1500 - Date.now());
  assert.equal(c.state, 'connected');
  assert.deepEqual(
    refreshed.map((e) => e.server),
    [true],
  );
  assert.ok(c.tokenExpiresAt >= exp + 50);
  assert.deepEqual(asked, ['connect'], 'getToken was not asked for a refresh');
  assert.equal(sent.filter((f) => f.type === 'refresh').length, 0);
});
