// A real cluster for the tests, as plain processes on loopback: a
// redis-server on a free port (no persistence, its own temporary folder),
// the presence service and any number of gateways. The presence binary is
// $ROOMCAST_PRESENCE_BIN, else roomcast-presence beside the gateway binary.
// Every process is killed when the test process exits (gateway.mjs), or
// earlier by `stop()`.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { Gateway, REPO, Server, gatewayBin } from './gateway.mjs';

const REDIS_START_MS = 10_000;

export function presenceBin() {
  return process.env.ROOMCAST_PRESENCE_BIN || path.join(path.dirname(gatewayBin()), 'roomcast-presence');
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts redis-server on a free loopback port; resolves once it accepts connections. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'roomcast-redis-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  const proc = spawn(process.env.ROOMCAST_REDIS_SERVER || 'redis-server', args, {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  process.on('exit', () => proc.kill('SIGKILL'));
  const log = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server not ready:\n${log.join('')}`)), REDIS_START_MS);
    proc.on('error', (error) => reject(new Error(`redis-server: ${error.message} (scripts/deps.sh redis installs it)`)));
    proc.on('exit', (code) => reject(new Error(`redis-server exited (${code}):\n${log.join('')}`)));
    proc.stdout.on('data', (chunk) => {
      log.push(chunk.toString());
      if (log.join('').includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    /** Freezes (SIGSTOP) or thaws (SIGCONT) redis-server: connections stay open, nothing is answered. */
    pause() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGSTOP');
    },
    resume() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGCONT');
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await new Promise((resolve) => proc.once('exit', resolve));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Redis, the presence service and one gateway per id in `nodes`, each with
 * `env` on top of the cluster settings.
 */
export async function startCluster(nodes, env = {}) {
  const redis = await startRedis();
  const presence = await new Server({
    bin: presenceBin(),
    name: 'presence',
    env: {
      ROOMCAST_LISTEN: '127.0.0.1:0',
      ROOMCAST_REDIS__URL: redis.url,
      ROOMCAST_LOG__LEVEL: 'info',
    },
  }).start();
  const gateways = [];
  for (const id of nodes) {
    const gateway = new Gateway({
      env: {
        ROOMCAST_REDIS__URL: redis.url,
        ROOMCAST_PRESENCE__URL: presence.httpUrl,
        ROOMCAST_AUTH__RESUME_SECRET: 'js-cluster-test-secret',
        ROOMCAST_NODE__ID: id,
        ...env,
      },
    });
    gateways.push(await gateway.start());
  }
  return {
    redis,
    presence,
    gateways,
    async stop() {
      for (const gateway of gateways) await gateway.stop();
      await presence.stop();
      await redis.stop();
    },
  };
}
