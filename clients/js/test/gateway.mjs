// Starts and stops real roomcast-gateway processes for the tests (and, for
// cluster.mjs, the presence service).
//
// The binary is $ROOMCAST_GATEWAY_BIN, else <repo>/target/debug/roomcast-gateway
// (`make build` builds it). Each gateway runs single-node and in-memory on a
// loopback port unless told otherwise: port 0 picks a free one, read back
// from the log line "listening on http://ADDR". Every process started here is
// killed when the test process exits, whatever happened.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const API_KEY = 'test-key';
const START_TIMEOUT_MS = 15_000;

export function gatewayBin() {
  return process.env.ROOMCAST_GATEWAY_BIN || path.join(REPO, 'target', 'debug', 'roomcast-gateway');
}

const alive = new Set();
process.on('exit', () => {
  for (const child of alive) child.kill('SIGKILL');
});

/**
 * A roomcast server process (a gateway, the presence service) on a loopback
 * port: port 0 picks a free one, read back from its log line "listening on
 * http://ADDR".
 */
export class Server {
  constructor({ bin, args = [], name = path.basename(bin), env = {} }) {
    this.bin = bin;
    this.args = args;
    this.name = name;
    this.env = env;
    this.proc = null;
    this.addr = null;
    this.log = [];
  }

  get port() {
    return Number(this.addr.split(':').pop());
  }

  get httpUrl() {
    return `http://${this.addr}`;
  }

  /** Starts the process and waits for its listening line. */
  async start() {
    if (path.isAbsolute(this.bin) && !existsSync(this.bin)) throw new Error(`${this.bin} not found: run make build`);
    // A clean environment: inherited ROOMCAST_* settings must not change what is tested.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ROOMCAST_')));
    Object.assign(env, this.env);
    const proc = spawn(this.bin, this.args, { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    alive.add(proc);
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        alive.delete(proc);
        resolve({ code, signal });
      });
    });
    this.addr = await new Promise((resolve, reject) => {
      let buffered = '';
      const timer = setTimeout(() => {
        reject(new Error(`${this.name} did not report its address within ${START_TIMEOUT_MS} ms:\n${this.tail()}`));
      }, START_TIMEOUT_MS);
      const onData = (chunk) => {
        buffered += chunk.toString();
        let nl;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          this.log.push(line);
          const match = /listening on http:\/\/(\S+)/.exec(line);
          if (match) {
            clearTimeout(timer);
            resolve(match[1]);
          }
        }
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', (chunk) => this.log.push(...chunk.toString().split('\n').filter(Boolean)));
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${code ?? signal}) before listening:\n${this.tail()}`));
      });
    });
    return this;
  }

  tail(lines = 30) {
    return this.log.slice(-lines).join('\n');
  }

  /** Stops the process with `signal` (SIGKILL: a crash) and waits for it to exit. */
  async stop(signal = 'SIGKILL', timeoutMs = 10_000) {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Freezes (SIGSTOP) or thaws (SIGCONT) the process: its sockets stay open but silent. */
  pause() {
    this.proc.kill('SIGSTOP');
  }

  resume() {
    this.proc.kill('SIGCONT');
  }
}

/** A gateway, single-node and in-memory unless `env` says otherwise, with the API key `test-key`. */
export class Gateway extends Server {
  constructor({ port = 0, env = {} } = {}) {
    super({
      bin: gatewayBin(),
      name: 'gateway',
      env: {
        ROOMCAST_LISTEN: `127.0.0.1:${port}`,
        ROOMCAST_API__KEY: API_KEY,
        ROOMCAST_LOG__LEVEL: 'info',
        ...env,
      },
    });
    this.extraEnv = env;
  }

  get wsUrl() {
    return `ws://${this.addr}/ws`;
  }

  /** Starts a new gateway on the same port (the old one must be stopped). */
  async restart(env = this.extraEnv) {
    const port = this.port;
    let lastError;
    for (let i = 0; i < 20; i++) {
      const next = new Gateway({ port, env });
      try {
        await next.start();
        return next;
      } catch (error) {
        lastError = error; // the port may take a moment to be free again
        await sleep(100);
      }
    }
    throw lastError;
  }

  /** POST /api/publish. */
  async publish(room, data) {
    const response = await fetch(`${this.httpUrl}/api/publish`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ room, data }),
      signal: AbortSignal.timeout(5000),
    });
    if (!response.ok) throw new Error(`publish: HTTP ${response.status}: ${await response.text()}`);
    return response.json();
  }

  /** GET /api/history/{room}: `{room, epoch, offset, messages}`. */
  async history(room, limit = 100) {
    const response = await fetch(`${this.httpUrl}/api/history/${encodeURIComponent(room)}?limit=${limit}`, {
      headers: { Authorization: `Bearer ${API_KEY}` },
      signal: AbortSignal.timeout(5000),
    });
    if (!response.ok) throw new Error(`history: HTTP ${response.status}: ${await response.text()}`);
    return response.json();
  }

  /** The value of an unlabelled metric from GET /metrics (0 when absent). */
  async metric(name) {
    const response = await fetch(`${this.httpUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await response.text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(' ')[1]) : 0;
  }
}

/**
 * The example application backend (examples/backend/backend.py, python3):
 * answers the node's proxies (`/connect`, `/refresh`, …) on a free port.
 */
export async function startBackend() {
  const script = path.join(REPO, 'examples', 'backend', 'backend.py');
  return new Server({ bin: 'python3', args: [script, '--port', '0', '--webhook-secret', 'x'], name: 'backend' }).start();
}

export async function startGateway(options) {
  return new Gateway(options).start();
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `predicate` until it is truthy; fails after `timeoutMs`. */
export async function waitFor(predicate, { timeoutMs = 5000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}
