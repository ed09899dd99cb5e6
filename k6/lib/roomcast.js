// Shared helpers of the k6 scripts: where to connect and how to speak the
// roomcast protocol v1 (JSON subprotocol, docs/protocol.md) with k6/ws.
//
// Environment:
//   ROOMCAST_WS     WebSocket URL (default ws://127.0.0.1:8080/ws)
//   ROOMCAST_TOKEN  a JWT sent in every hello (deployments with auth.jwt_*);
//                   without it clients connect anonymously

export const WS_URL = __ENV.ROOMCAST_WS || 'ws://127.0.0.1:8080/ws';
export const SUBPROTOCOL = 'roomcast.v1.json';
const TOKEN = __ENV.ROOMCAST_TOKEN || '';

// An integer setting from the environment, or its default.
export function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = parseInt(raw, 10);
  if (Number.isNaN(value)) throw new Error(`${name} must be an integer, got ${raw}`);
  return value;
}

// Parameters of ws.connect: the JSON subprotocol, and tags for the k6 metrics.
export function connectParams(tags) {
  return { headers: { 'Sec-WebSocket-Protocol': SUBPROTOCOL }, tags: tags || {} };
}

// The first frame of every connection; `resume` is {session, token, rooms}.
export function helloFrame(id, resume) {
  const frame = { type: 'hello', id };
  if (TOKEN) frame.token = TOKEN;
  if (resume) frame.resume = resume;
  return frame;
}

export function sendFrame(socket, frame) {
  socket.send(JSON.stringify(frame));
}

// Decodes a server frame; null for anything that is not a JSON object.
export function parseFrame(data) {
  try {
    const frame = JSON.parse(data);
    return frame && typeof frame === 'object' ? frame : null;
  } catch (e) {
    return null;
  }
}

// A room name unique to this test run (room names: A-Z a-z 0-9 _ - . : @ =).
export function runRoom(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
}

// Milliseconds left until `deadline` (a Date.now() value), never negative.
export function msUntil(deadline) {
  return Math.max(0, deadline - Date.now());
}
