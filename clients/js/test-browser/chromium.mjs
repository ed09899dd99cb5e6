// Headless Chromium for the browser tests: Debian's /usr/bin/chromium
// ($ROOMCAST_CHROMIUM overrides it), driven by playwright-core. No browser is
// ever downloaded; scripts/deps.sh chromium installs Debian's.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.ROOMCAST_CHROMIUM || '/usr/bin/chromium';

// Nothing in the background: the tests' pages make the only requests.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** Starts the browser (fails with what to run when it is missing). */
export function launchChromium() {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: run scripts/deps.sh chromium`);
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: 30_000 });
}
