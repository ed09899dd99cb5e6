#!/usr/bin/env python3
"""A small application backend for roomcast's hooks (docs/hooks.md).

Standard library only. It answers the proxies (connect, join, publish, rpc)
with simple rules, and receives webhooks, checking their signature. The test
suite runs it; it is also a starting point for a real backend.

    python3 examples/backend/backend.py --port 9000 --webhook-secret s3cret

It prints `backend listening on http://HOST:PORT` once it serves.

Rules (chosen so that tests can reach every path by what they send):

connect  token "deny:<why>"   -> refused with 4403 and <why>
         token "unauth"       -> refused with 4401
         token "user:<id>"    -> accepted as <id>, info {"via": "backend"},
                                 may join "*" and publish to "news"
         token "slow"         -> answers after --slow-seconds
         anything else        -> {"result": {}}: the node's own identity
join     room containing "forbidden" -> denied ("no entry to <room>")
         room containing "slow"      -> answers after --slow-seconds
         else allowed
publish  data {"deny": why}          -> denied with why
         data {"shout": text}        -> replaced by {"shout": TEXT, "moderated": true}
         room containing "slow"      -> answers after --slow-seconds
         else allowed unchanged
refresh  user containing "stop" -> refused (the connection ends at its expiry)
         else {"result": {"expires_at": now + 60}}
connect  token "subs:<a>,<b>" -> accepted, joined to rooms a and b at hello
rpc      method "echo" -> data back;  "add" -> data.a + data.b
         "fail" -> error bad_request; "slow" -> after --slow-seconds
webhook  POST /webhook: signature and timestamp checked (401 if wrong);
         the events are recorded. POST /control/webhook-failures {"count": n}
         makes the next n webhook requests answer 500.

GET /calls returns the proxy calls seen (kind, body, selected headers);
GET /webhooks returns {"batches": n, "events": [...], "rejected": n,
"failed": n}. POST /control/reset clears both.
"""

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIGNATURE_TOLERANCE_S = 300


class State:
    def __init__(self, webhook_secret, slow_seconds):
        self.lock = threading.Lock()
        self.webhook_secret = webhook_secret.encode()
        self.slow_seconds = slow_seconds
        self.reset()

    def reset(self):
        with self.lock:
            self.calls = []
            self.events = []
            self.batches = 0
            self.rejected = 0
            self.failed = 0
            self.fail_next = 0


def verify_signature(secret, timestamp, body, signature):
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(time.time() - ts) > SIGNATURE_TOLERANCE_S:
        return False
    mac = hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v1={mac}", signature or "")


def connect(state, req):
    token = req.get("token") or ""
    if token.startswith("deny:"):
        return {"error": {"code": 4403, "message": token[len("deny:"):]}}
    if token == "unauth":
        return {"error": {"code": 4401, "message": "the backend does not know this token"}}
    if token == "slow":
        time.sleep(state.slow_seconds)
        return {"result": {}}
    if token.startswith("subs:"):
        return {"result": {"subs": token[len("subs:"):].split(",")}}
    if token.startswith("user:"):
        return {"result": {"user": token[len("user:"):], "info": {"via": "backend"},
                           "rooms": ["*"], "publish": ["news"]}}
    return {"result": {}}


def join(state, req):
    room = req.get("room", "")
    if "forbidden" in room:
        return {"error": {"message": f"no entry to {room}"}}
    if "slow" in room:
        time.sleep(state.slow_seconds)
    return {"result": {}}


def publish(state, req):
    data = req.get("data")
    if isinstance(data, dict) and "deny" in data:
        return {"error": {"message": str(data["deny"])}}
    if "slow" in req.get("room", ""):
        time.sleep(state.slow_seconds)
    if isinstance(data, dict) and "shout" in data:
        return {"result": {"data": {"shout": str(data["shout"]).upper(), "moderated": True}}}
    return {"result": {}}


def refresh(state, req):
    if "stop" in (req.get("user") or ""):
        return {"error": {"message": "no more time for this user"}}
    return {"result": {"expires_at": int(time.time()) + 60}}


def rpc(state, req):
    method, data = req.get("method"), req.get("data")
    if method.endswith("echo"):
        return {"result": {"data": data}}
    if method.endswith("add"):
        return {"result": {"data": data["a"] + data["b"]}}
    if method.endswith("slow"):
        time.sleep(state.slow_seconds)
        return {"result": {"data": "late"}}
    if method.endswith("fail"):
        return {"error": {"code": "bad_request", "message": "this method always fails"}}
    return {"error": {"code": "bad_request", "message": f"unknown method {method}"}}


PROXIES = {"/connect": connect, "/join": join, "/publish": publish, "/rpc": rpc,
           "/refresh": refresh}
# Paths under a namespace prefix (/game/join) use the same rules.
KEPT_HEADERS = ("authorization", "traceparent", "x-roomcast-node")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set by main

    def log_message(self, fmt, *args):  # quiet: tests read stdout for the listen line
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        st = self.state
        with st.lock:
            if self.path == "/calls":
                return self.reply(200, st.calls)
            if self.path == "/webhooks":
                return self.reply(200, {"batches": st.batches, "events": st.events,
                                        "rejected": st.rejected, "failed": st.failed})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        st = self.state
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = self.path
        if path == "/control/reset":
            st.reset()
            return self.reply(200, {})
        if path == "/control/webhook-failures":
            with st.lock:
                st.fail_next = json.loads(body or b"{}").get("count", 1)
            return self.reply(200, {})
        if path == "/webhook":
            return self.webhook(body)
        kind = "/" + path.rstrip("/").rsplit("/", 1)[-1]
        handler = PROXIES.get(kind)
        if handler is None:
            return self.reply(404, {"error": "not found"})
        try:
            req = json.loads(body)
        except ValueError:
            return self.reply(400, {"error": "body is not JSON"})
        headers = {h: self.headers[h] for h in KEPT_HEADERS if self.headers[h] is not None}
        with st.lock:
            st.calls.append({"kind": kind[1:], "path": path, "body": req, "headers": headers})
        self.reply(200, handler(st, req))

    def webhook(self, body):
        st = self.state
        ok = verify_signature(st.webhook_secret, self.headers.get("X-Roomcast-Timestamp"),
                              body, self.headers.get("X-Roomcast-Signature"))
        with st.lock:
            if not ok:
                st.rejected += 1
                return self.reply(401, {"error": "bad signature"})
            if st.fail_next > 0:
                st.fail_next -= 1
                st.failed += 1
                return self.reply(500, {"error": "failing on purpose"})
            st.batches += 1
            st.events.extend(json.loads(body)["events"])
        self.reply(200, {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--webhook-secret", default="", help="the gateway's webhooks.secret")
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    args = parser.parse_args()
    Handler.state = State(args.webhook_secret, args.slow_seconds)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"backend listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
