// The browser tests' harness: a real gateway (`lakewire run`) on the real broker, records written
// with `lw-produce`, and Debian's chromium driven by playwright-core.
//
// Environment (integration-tests/run-all sets them):
//   TEST_KAFKA_BROKERS  the broker (default 127.0.0.1:9092)
//   LAKEWIRE_BIN        the gateway binary (default target/debug/lakewire)
//   LW_PRODUCE_BIN      the producer helper (default target/debug/lw-produce)
//   CHROMIUM            the browser (default /usr/bin/chromium)
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '../../..');
export const brokers = process.env.TEST_KAFKA_BROKERS || '127.0.0.1:9092';
const lakewireBin = process.env.LAKEWIRE_BIN || join(root, 'target/debug/lakewire');
const produceBin = process.env.LW_PRODUCE_BIN || join(root, 'target/debug/lw-produce');

let counter = 0;
/** A topic name no other test or run uses. */
export function uniqueTopic(prefix) {
  return `${prefix}-${process.pid}-${Date.now()}-${counter++}`;
}

/** A free TCP port on loopback. */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Creates `topic` with `partitions` partitions and writes `records` ({partition, key, value}). */
export function produce(topic, partitions, records) {
  const input = records
    .map((r) => `${r.partition}\t${r.key ?? ''}\t${typeof r.value === 'string' ? r.value : JSON.stringify(r.value)}\n`)
    .join('');
  return new Promise((ok, fail) => {
    const p = spawn(produceBin, [brokers, topic, String(partitions)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', fail);
    p.on('exit', (code) => (code === 0 ? ok() : fail(new Error(`lw-produce exited ${code}: ${err}`))));
    p.stdin.end(input);
  });
}

/** A gateway serving `topics` (JSON format) on `port`; `extra` is more TOML for [websocket]. */
export class Gateway {
  constructor(topics, { port, extra = '' }) {
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    this.dir = mkdtempSync(join(tmpdir(), 'lakewire-browser-'));
    this.config = join(this.dir, 'lakewire.toml');
    let toml = `[kafka]\nbrokers = "${brokers}"\nrequest_timeout_ms = 5000\n\n[websocket]\nlisten = "127.0.0.1:${port}"\n${extra}\n`;
    for (const t of topics) toml += `\n[[topics]]\nname = "${t}"\nformat = "json"\n`;
    writeFileSync(this.config, toml);
    this.log = '';
  }

  /** Starts the process and waits until /readyz says ready. */
  async start() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LAKEWIRE_')));
    this.proc = spawn(lakewireBin, ['run', '--config', this.config], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((ok) => this.proc.on('exit', (code, signal) => ok({ code, signal })));
    for (const s of [this.proc.stdout, this.proc.stderr]) s.on('data', (d) => { this.log += d; });
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`gateway exited ${this.proc.exitCode}:\n${this.log}`);
      try {
        const r = await fetch(this.base + '/readyz');
        if (r.status === 200) return this;
      } catch { /* not listening yet */ }
      await sleep(100);
    }
    throw new Error(`gateway not ready within 30 s:\n${this.log}`);
  }

  /** SIGTERM, and waits for the exit. */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    await this.exited;
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `check` (async, returns truthy when done) until it passes or `ms` is over. */
export async function eventually(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** Debian's chromium, headless, with a fresh profile (playwright makes a new temporary
 * --user-data-dir for every launch and removes it on close). */
export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run',
    ],
  });
  return {
    browser,
    async close() {
      await browser.close();
    },
  };
}

/** A page that records console errors, page errors and requests to other origins. */
export async function openPage(browser, url, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  const problems = [];
  const origin = new URL(url).origin;
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol !== 'data:' && u.origin !== origin && u.origin.replace(/^ws/, 'http') !== origin) {
      problems.push(`request to another origin: ${r.url()}`);
    }
  });
  await page.goto(url);
  return { page, context, problems };
}

/** The (partition, offset) of every row in the first subscription panel, top to bottom. */
export function rows(page) {
  return page.$$eval('.sub tr.rec', (trs) => trs.map((tr) => [Number(tr.dataset.partition), Number(tr.dataset.offset)]));
}
