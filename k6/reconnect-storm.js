// Reconnect storm: CLIENTS connections join rooms while a publisher keeps
// writing into them; every CYCLE_S seconds all clients drop their connection
// at the same moment and reconnect at once (spread over JITTER_MS if set),
// resuming their session with their rooms' offsets, as clients do after a
// node drains or a balancer restarts. Checks that every resume succeeds, that
// the messages missed meanwhile are replayed (no gap, no duplicate), and how
// long reconnecting takes under the storm.
//
//   k6 run k6/reconnect-storm.js
//   ROOMCAST_WS=wss://rc.example.com/ws CLIENTS=2000 JITTER_MS=0 k6 run k6/reconnect-storm.js
//
// Environment (defaults in brackets):
//   ROOMCAST_WS [ws://127.0.0.1:8080/ws], ROOMCAST_TOKEN (see lib/roomcast.js)
//   CLIENTS [200]            client connections (one per VU)
//   DURATION_S [60]          test length in seconds
//   CYCLE_S [10]             seconds between storms
//   JITTER_MS [0]            reconnect delay, random in [0, JITTER_MS): 0 is the
//                            worst case, real clients back off with jitter
//   ROOMS [10]               rooms the clients are spread over (at most 100)
//   PUBLISH_RATE [10]        messages per second the publisher sends, over all rooms
//   RECONNECT_P95_MS [1000]  threshold on connect-to-welcome time of reconnects
//
// Resuming needs the same auth.resume_secret on every node, and history
// (history.size, history.ttl_ms) deep enough for what is missed in between.

import ws from 'k6/ws';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  WS_URL, intEnv, connectParams, helloFrame, sendFrame, parseFrame, runRoom, msUntil,
} from './lib/roomcast.js';

const CLIENTS = intEnv('CLIENTS', 200);
const DURATION_S = intEnv('DURATION_S', 60);
const CYCLE_MS = Math.max(1, intEnv('CYCLE_S', 10)) * 1000;
const JITTER_MS = Math.max(0, intEnv('JITTER_MS', 0));
const ROOMS = Math.min(100, Math.max(1, intEnv('ROOMS', 10)));
const PUBLISH_RATE = Math.max(1, intEnv('PUBLISH_RATE', 10));
const RECONNECT_P95_MS = intEnv('RECONNECT_P95_MS', 1000);
const HELLO_TIMEOUT_MS = 10000;

const connectOk = new Rate('roomcast_connect_ok');
const reconnectTime = new Trend('roomcast_reconnect_time', true);
const resumeOk = new Rate('roomcast_resume_ok');
const recovered = new Rate('roomcast_recovered');
const gaps = new Counter('roomcast_storm_gaps');
const duplicates = new Counter('roomcast_storm_duplicates');
const received = new Counter('roomcast_storm_received');
const publishOk = new Rate('roomcast_publish_ok');
const errors = new Counter('roomcast_errors');

export const options = {
  scenarios: {
    clients: {
      executor: 'constant-vus',
      exec: 'client',
      vus: CLIENTS,
      duration: `${DURATION_S}s`,
      gracefulStop: '5s',
    },
    publisher: {
      executor: 'constant-vus',
      exec: 'publisher',
      vus: 1,
      duration: `${DURATION_S}s`,
      gracefulStop: '5s',
    },
  },
  thresholds: {
    roomcast_connect_ok: ['rate>0.99'],
    roomcast_resume_ok: ['rate>0.99'],
    roomcast_recovered: ['rate>0.99'],
    roomcast_reconnect_time: [`p(95)<${RECONNECT_P95_MS}`],
    roomcast_storm_gaps: ['count==0'],
    roomcast_storm_duplicates: ['count==0'],
    roomcast_storm_received: ['count>0'],
    roomcast_publish_ok: ['rate>0.99'],
    roomcast_errors: ['count==0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  const start = Date.now();
  return { prefix: __ENV.ROOMCAST_ROOM || runRoom('k6-storm'), start, end: start + DURATION_S * 1000 };
}

// Per-VU state, kept across iterations (one iteration = one connection).
let session = null;
let resumeToken = null;
let position = null; // {offset, epoch} of the last message seen in this VU's room

// Next storm: the next cycle boundary at least 500 ms away, plus jitter.
function nextDrop(start) {
  const now = Date.now();
  let boundary = start + (Math.floor((now - start) / CYCLE_MS) + 1) * CYCLE_MS;
  if (boundary - now < 500) boundary += CYCLE_MS;
  return boundary + (JITTER_MS > 0 ? Math.floor(Math.random() * JITTER_MS) : 0);
}

// Follows the offsets of messages in the room: counts gaps and duplicates.
function track(frame) {
  received.add(1);
  if (position && frame.epoch === position.epoch) {
    if (frame.offset > position.offset + 1) gaps.add(frame.offset - position.offset - 1);
    if (frame.offset <= position.offset) duplicates.add(1);
    position.offset = Math.max(position.offset, frame.offset);
  } else {
    position = { offset: frame.offset, epoch: frame.epoch };
  }
}

export function client(data) {
  const closeAt = data.end - 500;
  if (msUntil(closeAt) < 1000) {
    sleep(msUntil(closeAt) / 1000 + 0.6);
    return;
  }
  const room = `${data.prefix}-${__VU % ROOMS}`;
  const resuming = session !== null;
  const dropAt = Math.min(nextDrop(data.start), closeAt);
  let welcomed = false;
  let inRoom = false;
  let sentSince = false;

  const join = (socket) => {
    const frame = { type: 'join', id: 2, room };
    if (position) {
      frame.since = { offset: position.offset, epoch: position.epoch };
      sentSince = true;
    }
    sendFrame(socket, frame);
  };

  const started = Date.now();
  const res = ws.connect(WS_URL, connectParams({ scenario: 'clients' }), (socket) => {
    socket.on('open', () => {
      let resume = null;
      if (resuming) {
        resume = { session, token: resumeToken, rooms: [] };
        if (position) resume.rooms.push({ room, offset: position.offset, epoch: position.epoch });
      }
      sendFrame(socket, helloFrame(1, resume));
    });
    socket.on('message', (raw) => {
      const frame = parseFrame(raw);
      if (!frame) return;
      switch (frame.type) {
        case 'welcome': {
          welcomed = true;
          session = frame.session;
          resumeToken = frame.resume_token;
          if (!resuming) {
            join(socket);
            break;
          }
          reconnectTime.add(Date.now() - started);
          resumeOk.add(frame.resumed === true);
          const entry = frame.resumed ? (frame.rooms || []).find((r) => r.room === room) : null;
          if (entry) {
            inRoom = true;
            recovered.add(entry.recovered === true);
            // Not recovered: the missed messages are gone; go on from here.
            if (entry.recovered !== true) position = { offset: entry.offset, epoch: entry.epoch };
          } else {
            join(socket); // a fresh session: join again, with `since`
          }
          break;
        }
        case 'joined':
          if (frame.room !== room) break;
          inRoom = true;
          if (sentSince) recovered.add(frame.recovered === true);
          if (!position || frame.recovered !== true) position = { offset: frame.offset, epoch: frame.epoch };
          break;
        case 'message':
          if (frame.room === room) track(frame);
          break;
        case 'error':
          errors.add(1, { code: String(frame.code) });
          break;
        case 'reconnect':
          socket.close(); // a draining node: reconnect (and resume) at once
          break;
        default:
          break;
      }
    });
    socket.setTimeout(() => {
      if (!welcomed) socket.close();
    }, HELLO_TIMEOUT_MS);
    socket.setTimeout(() => socket.close(), msUntil(dropAt));
  });

  const upgraded = !!res && res.status === 101;
  connectOk.add(upgraded && welcomed && inRoom);
  check(res, { 'upgraded (101)': () => upgraded });
  check(null, { 'got welcome': () => welcomed, 'in room': () => inRoom });
  if (!inRoom) sleep(1);
}

export function publisher(data) {
  const stopAt = data.end - 1500;
  const closeAt = data.end - 500;
  if (msUntil(stopAt) < 1000) {
    sleep(msUntil(closeAt) / 1000 + 0.6);
    return;
  }
  const pending = {};
  let joinedRooms = 0;
  let nextId = 1000;
  let turn = 0;

  const res = ws.connect(WS_URL, connectParams({ scenario: 'publisher' }), (socket) => {
    socket.on('open', () => sendFrame(socket, helloFrame(1)));
    socket.on('message', (raw) => {
      const frame = parseFrame(raw);
      if (!frame) return;
      if (frame.type === 'welcome') {
        for (let i = 0; i < ROOMS; i++) {
          sendFrame(socket, { type: 'join', id: 2 + i, room: `${data.prefix}-${i}` });
        }
      } else if (frame.type === 'joined') {
        joinedRooms += 1;
        if (joinedRooms === ROOMS) {
          socket.setInterval(() => {
            if (Date.now() >= stopAt) return;
            const id = nextId++;
            pending[id] = true;
            const room = `${data.prefix}-${turn++ % ROOMS}`;
            sendFrame(socket, { type: 'publish', id, room, data: { ts: Date.now() } });
          }, Math.max(1, Math.floor(1000 / PUBLISH_RATE)));
        }
      } else if (frame.type === 'ack' && pending[frame.id]) {
        publishOk.add(true);
        delete pending[frame.id];
      } else if (frame.type === 'error') {
        errors.add(1, { code: String(frame.code) });
        if (pending[frame.id]) {
          publishOk.add(false);
          delete pending[frame.id];
        }
      } else if (frame.type === 'reconnect') {
        socket.close();
      }
    });
    socket.setTimeout(() => socket.close(), msUntil(closeAt));
  });

  for (const id of Object.keys(pending)) publishOk.add(false);
  check(res, { 'publisher upgraded (101)': (r) => !!r && r.status === 101 });
  check(null, { 'publisher joined every room': () => joinedRooms === ROOMS });
  if (joinedRooms !== ROOMS) sleep(1);
}
