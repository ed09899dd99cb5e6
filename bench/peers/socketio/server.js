// The Socket.IO peer of roomcast-bench: Socket.IO 4.8 with the Redis
// adapter, doing the least a chat relay can do, so the benchmark measures the
// stack rather than application code.
//
//   join     42["join", room]            -> socket.join(room), ack {ok: true}
//   publish  42["publish", {room, data}] -> io.to(room).emit("message", {room, data})
//
// Several of these processes behind one Redis form a cluster: a publish on
// one node reaches the room's members on every node through the adapter.
//
// Settings (environment):
//   REDIS_URL      redis://127.0.0.1:PORT (required)
//   LISTEN         host:port to bind (127.0.0.1:0: a free port)
//   PEER_DEFLATE   1 (default): negotiate permessage-deflate when offered
//                  (threshold 256 bytes, as roomcast's default); 0: never
//
// Prints `listening on http://HOST:PORT` once it serves. SIGTERM or SIGINT
// closes every connection and exits.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const redisUrl = process.env.REDIS_URL;
if (!redisUrl) {
  console.error("socketio peer: REDIS_URL is required");
  process.exit(2);
}
const [host, portText] = (process.env.LISTEN || "127.0.0.1:0").split(":");
const deflate = process.env.PEER_DEFLATE !== "0";

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error("redis (pub):", err.message));
  sub.on("error", (err) => console.error("redis (sub):", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, {
    adapter: createAdapter(pub, sub),
    serveClient: false,
    transports: ["websocket"],
    perMessageDeflate: deflate ? { threshold: 256 } : false,
  });

  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack({ ok: true });
    });
    socket.on("publish", (msg) => {
      if (msg && typeof msg.room === "string") {
        io.to(msg.room).emit("message", { room: msg.room, data: msg.data });
      }
    });
  });

  server.listen(Number(portText || 0), host, () => {
    const { address, port } = server.address();
    console.log(`listening on http://${address}:${port}`);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    io.close(() => {
      Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    });
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error("socketio peer:", err);
  process.exit(1);
});
