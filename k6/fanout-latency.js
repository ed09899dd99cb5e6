// Fan-out latency: SUBSCRIBERS clients join one room, PUBLISHERS clients
// publish into it, each message carrying the time it was sent; every
// subscriber measures publish-to-receive time (the roomcast_fanout_latency
// Trend) and checks that the room's offsets arrive with no gap.
//
//   k6 run k6/fanout-latency.js
//   ROOMCAST_WS=wss://rc.example.com/ws SUBSCRIBERS=500 DURATION_S=120 k6 run k6/fanout-latency.js
//
// Environment (defaults in brackets):
//   ROOMCAST_WS [ws://127.0.0.1:8080/ws], ROOMCAST_TOKEN (see lib/roomcast.js)
//   SUBSCRIBERS [50]      subscriber connections (one per VU)
//   PUBLISHERS [2]        publisher connections
//   PUBLISH_RATE [5]      messages per second per publisher (a connection may
//                         send limits.messages_per_second, 100 by default)
//   PAYLOAD_BYTES [64]    padding added to each message's data
//   DURATION_S [60]       test length in seconds
//   WARMUP_S [2]          publishers start this long after the subscribers
//   LATENCY_P95_MS [100], LATENCY_P99_MS [250]   latency thresholds
//   ROOMCAST_ROOM         room to use (default: a new room per run)
//
// The latency is measured with the load generator's own clock on both ends,
// so run publishers and subscribers in the same k6 process (not split across
// machines with unsynchronised clocks).

import ws from 'k6/ws';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  WS_URL, intEnv, connectParams, helloFrame, sendFrame, parseFrame, runRoom, msUntil,
} from './lib/roomcast.js';

const SUBSCRIBERS = intEnv('SUBSCRIBERS', 50);
const PUBLISHERS = intEnv('PUBLISHERS', 2);
const PUBLISH_RATE = intEnv('PUBLISH_RATE', 5);
const PAYLOAD_BYTES = intEnv('PAYLOAD_BYTES', 64);
const DURATION_S = intEnv('DURATION_S', 60);
const WARMUP_S = intEnv('WARMUP_S', 2);
const P95_MS = intEnv('LATENCY_P95_MS', 100);
const P99_MS = intEnv('LATENCY_P99_MS', 250);
const HELLO_TIMEOUT_MS = 10000;

if (DURATION_S <= WARMUP_S + 2) {
  throw new Error(`DURATION_S (${DURATION_S}) must be more than WARMUP_S + 2 (${WARMUP_S + 2})`);
}

const latency = new Trend('roomcast_fanout_latency', true);
const received = new Counter('roomcast_fanout_received');
const gaps = new Counter('roomcast_fanout_gaps');
const duplicates = new Counter('roomcast_fanout_duplicates');
const published = new Counter('roomcast_published');
const publishOk = new Rate('roomcast_publish_ok');
const ackTime = new Trend('roomcast_publish_ack_time', true);
const errors = new Counter('roomcast_errors');

export const options = {
  scenarios: {
    subscribers: {
      executor: 'constant-vus',
      exec: 'subscriber',
      vus: SUBSCRIBERS,
      duration: `${DURATION_S}s`,
      gracefulStop: '5s',
    },
    publishers: {
      executor: 'constant-vus',
      exec: 'publisher',
      vus: PUBLISHERS,
      startTime: `${WARMUP_S}s`,
      duration: `${DURATION_S - WARMUP_S}s`,
      gracefulStop: '5s',
    },
  },
  thresholds: {
    roomcast_fanout_latency: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    roomcast_fanout_received: ['count>0'],
    roomcast_fanout_gaps: ['count==0'],
    roomcast_fanout_duplicates: ['count==0'],
    roomcast_publish_ok: ['rate>0.99'],
    roomcast_errors: ['count==0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  const room = __ENV.ROOMCAST_ROOM || runRoom('k6-fanout');
  // The scenarios start right after setup: everything ends by `end`.
  return { room, end: Date.now() + DURATION_S * 1000 };
}

// Counts an error frame (rate_limited, unavailable, ...) by its code.
function countError(frame) {
  errors.add(1, { code: String(frame.code) });
  if (__ITER < 3) console.warn(`VU ${__VU}: error frame ${JSON.stringify(frame)}`);
}

// Waits out the end of the test instead of starting a connection that would
// be cut short; returns true when the caller should return.
function tooLate(deadline) {
  const left = msUntil(deadline);
  if (left < 1000) {
    sleep(left / 1000 + 0.1);
    return true;
  }
  return false;
}

export function subscriber(data) {
  const closeAt = data.end - 250;
  if (tooLate(closeAt)) return;
  let welcomed = false;
  let joined = false;
  let last = null; // last offset seen in the room
  let epoch = null;

  const res = ws.connect(WS_URL, connectParams({ role: 'subscriber' }), (socket) => {
    socket.on('open', () => sendFrame(socket, helloFrame(1)));
    socket.on('message', (raw) => {
      const frame = parseFrame(raw);
      if (!frame) return;
      switch (frame.type) {
        case 'welcome':
          welcomed = true;
          sendFrame(socket, { type: 'join', id: 2, room: data.room });
          break;
        case 'joined':
          joined = true;
          last = frame.offset;
          epoch = frame.epoch;
          break;
        case 'message': {
          if (frame.room !== data.room) break;
          const now = Date.now();
          received.add(1);
          if (frame.data && typeof frame.data.ts === 'number') latency.add(now - frame.data.ts);
          if (last !== null && frame.epoch === epoch) {
            if (frame.offset > last + 1) gaps.add(frame.offset - last - 1);
            if (frame.offset <= last) duplicates.add(1);
          }
          if (frame.epoch !== epoch) epoch = frame.epoch;
          last = Math.max(last === null ? 0 : last, frame.offset);
          break;
        }
        case 'error':
          countError(frame);
          break;
        case 'reconnect':
          // The node drains: leave now, the next iteration connects again.
          socket.close();
          break;
        default:
          break;
      }
    });
    socket.setTimeout(() => {
      if (!welcomed) socket.close();
    }, HELLO_TIMEOUT_MS);
    socket.setTimeout(() => socket.close(), msUntil(closeAt));
  });

  const ok = check(res, { 'subscriber upgraded (101)': (r) => r && r.status === 101 });
  check(null, {
    'subscriber got welcome': () => welcomed,
    'subscriber joined': () => joined,
  });
  if (!ok || !joined) sleep(1);
}

export function publisher(data) {
  const stopAt = data.end - 1500; // last publish: leaves time for the acks
  const closeAt = data.end - 500;
  if (tooLate(stopAt)) return;
  let welcomed = false;
  let joined = false;
  const pending = {}; // id -> time sent
  const pad = 'x'.repeat(PAYLOAD_BYTES);
  let nextId = 10;

  const res = ws.connect(WS_URL, connectParams({ role: 'publisher' }), (socket) => {
    socket.on('open', () => sendFrame(socket, helloFrame(1)));
    socket.on('message', (raw) => {
      const frame = parseFrame(raw);
      if (!frame) return;
      if (frame.type === 'welcome') {
        welcomed = true;
        sendFrame(socket, { type: 'join', id: 2, room: data.room });
      } else if (frame.type === 'joined' && frame.id === 2) {
        joined = true;
        socket.setInterval(() => {
          if (Date.now() >= stopAt) return;
          const id = nextId++;
          pending[id] = Date.now();
          sendFrame(socket, {
            type: 'publish', id, room: data.room, data: { ts: pending[id], vu: __VU, pad },
          });
          published.add(1);
        }, Math.max(1, Math.floor(1000 / PUBLISH_RATE)));
      } else if (frame.type === 'ack' && pending[frame.id] !== undefined) {
        ackTime.add(Date.now() - pending[frame.id]);
        publishOk.add(true);
        delete pending[frame.id];
      } else if (frame.type === 'error') {
        countError(frame);
        if (pending[frame.id] !== undefined) {
          publishOk.add(false);
          delete pending[frame.id];
        }
      } else if (frame.type === 'reconnect') {
        socket.close();
      }
    });
    socket.setTimeout(() => {
      if (!welcomed) socket.close();
    }, HELLO_TIMEOUT_MS);
    socket.setTimeout(() => socket.close(), msUntil(closeAt));
  });

  // Publishes never acknowledged (connection lost, or no answer in time).
  for (const id of Object.keys(pending)) publishOk.add(false);
  const ok = check(res, { 'publisher upgraded (101)': (r) => r && r.status === 101 });
  check(null, { 'publisher joined': () => joined });
  if (!ok || !joined) sleep(1);
}
