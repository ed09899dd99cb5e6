// Connection ramp: ramps up to TARGET_VUS concurrent connections, each of
// which says hello, joins a room and then stays connected, sending a `ping`
// frame every PING_INTERVAL_S; holds them for HOLD_S, then closes them all.
// Measures the upgrade, welcome, join and ping/pong times under a growing
// number of connections.
//
//   k6 run k6/connect-ramp.js
//   ROOMCAST_WS=wss://rc.example.com/ws TARGET_VUS=5000 RAMP_S=120 k6 run k6/connect-ramp.js
//
// Environment (defaults in brackets):
//   ROOMCAST_WS [ws://127.0.0.1:8080/ws], ROOMCAST_TOKEN (see lib/roomcast.js)
//   TARGET_VUS [500]       connections at the top of the ramp (one per VU)
//   RAMP_S [30]            ramp-up time
//   HOLD_S [30]            time all connections are held after the ramp
//   ROOMS [10]             rooms the connections are spread over
//   PING_INTERVAL_S [10]   seconds between ping frames on each connection
//   WELCOME_P95_MS [1000], JOIN_P95_MS [1000], PONG_P95_MS [500]   thresholds
//
// One k6 process holds a file descriptor per connection: raise `ulimit -n`
// above TARGET_VUS (and the gateway's limits.max_connections_per_ip, 2000 by
// default, counts every connection from this machine's address).

import ws from 'k6/ws';
import { check, sleep } from 'k6';
import { Rate, Trend, Counter } from 'k6/metrics';
import {
  WS_URL, intEnv, connectParams, helloFrame, sendFrame, parseFrame, runRoom, msUntil,
} from './lib/roomcast.js';

const TARGET_VUS = intEnv('TARGET_VUS', 500);
const RAMP_S = intEnv('RAMP_S', 30);
const HOLD_S = intEnv('HOLD_S', 30);
const ROOMS = Math.max(1, intEnv('ROOMS', 10));
const PING_INTERVAL_S = Math.max(1, intEnv('PING_INTERVAL_S', 10));
const WELCOME_P95_MS = intEnv('WELCOME_P95_MS', 1000);
const JOIN_P95_MS = intEnv('JOIN_P95_MS', 1000);
const PONG_P95_MS = intEnv('PONG_P95_MS', 500);
const HELLO_TIMEOUT_MS = 10000;

const connectOk = new Rate('roomcast_connect_ok');
const welcomeTime = new Trend('roomcast_welcome_time', true);
const joinTime = new Trend('roomcast_join_time', true);
const pongTime = new Trend('roomcast_pong_time', true);
const errors = new Counter('roomcast_errors');
const drained = new Counter('roomcast_reconnect_frames');

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: `${RAMP_S}s`, target: TARGET_VUS },
        { duration: `${HOLD_S}s`, target: TARGET_VUS },
        // All connections close at the end of the hold; this stage only
        // lets the VUs finish.
        { duration: '5s', target: 0 },
      ],
      gracefulRampDown: '5s',
      gracefulStop: '5s',
    },
  },
  thresholds: {
    roomcast_connect_ok: ['rate>0.99'],
    roomcast_welcome_time: [`p(95)<${WELCOME_P95_MS}`],
    roomcast_join_time: [`p(95)<${JOIN_P95_MS}`],
    roomcast_pong_time: [`p(95)<${PONG_P95_MS}`],
    roomcast_errors: ['count==0'],
    ws_connecting: [`p(95)<${WELCOME_P95_MS}`],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  return { prefix: __ENV.ROOMCAST_ROOM || runRoom('k6-ramp'), end: Date.now() + (RAMP_S + HOLD_S) * 1000 };
}

export default function (data) {
  const closeAt = data.end;
  if (msUntil(closeAt) < 500) {
    // Past the hold: wait for the ramp-down to stop this VU.
    sleep(1);
    return;
  }
  const room = `${data.prefix}-${__VU % ROOMS}`;
  let openedAt = 0;
  let joinSentAt = 0;
  let welcomed = false;
  let joined = false;
  const pings = {}; // id -> time sent
  let nextPing = 100;

  const started = Date.now();
  const res = ws.connect(WS_URL, connectParams({ scenario: 'ramp' }), (socket) => {
    socket.on('open', () => {
      openedAt = Date.now();
      sendFrame(socket, helloFrame(1));
    });
    socket.on('message', (raw) => {
      const frame = parseFrame(raw);
      if (!frame) return;
      const now = Date.now();
      switch (frame.type) {
        case 'welcome':
          welcomed = true;
          welcomeTime.add(now - openedAt);
          joinSentAt = now;
          sendFrame(socket, { type: 'join', id: 2, room });
          break;
        case 'joined':
          joined = true;
          joinTime.add(now - joinSentAt);
          socket.setInterval(() => {
            const id = nextPing++;
            pings[id] = Date.now();
            sendFrame(socket, { type: 'ping', id });
          }, PING_INTERVAL_S * 1000);
          break;
        case 'pong':
          if (pings[frame.id] !== undefined) {
            pongTime.add(now - pings[frame.id]);
            delete pings[frame.id];
          }
          break;
        case 'error':
          errors.add(1, { code: String(frame.code) });
          break;
        case 'reconnect':
          drained.add(1);
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

  const upgraded = !!res && res.status === 101;
  connectOk.add(upgraded && welcomed && joined);
  check(res, { 'upgraded (101)': () => upgraded });
  check(null, { 'got welcome': () => welcomed, joined: () => joined });
  if (!joined) sleep(1);
  // A connection that ended early (a drain, a lost socket) reconnects in the
  // next iteration; keep the reconnect rate humane.
  if (Date.now() - started < 1000) sleep(1);
}
