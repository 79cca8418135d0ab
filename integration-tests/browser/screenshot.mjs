// Saves docs/dashboard.png: the dashboard of `lakewire demo`, live, as README shows it.
//   cargo build -p lakewire && (cd integration-tests/browser && npm ci && node screenshot.mjs)
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { freePort, launchBrowser, sleep } from './tests/harness.mjs';

const root = resolve(import.meta.dirname, '../..');
const bin = process.env.LAKEWIRE_BIN || join(root, 'target/debug/lakewire');
const out = process.argv[2] || join(root, 'docs/dashboard.png');

const port = await freePort();
const demo = spawn(bin, ['demo', '--listen', `127.0.0.1:${port}`], { stdio: 'ignore' });
const chrome = await launchBrowser();
try {
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try { if ((await fetch(base + '/readyz')).ok) break; } catch { /* starting */ }
    await sleep(100);
  }
  const page = await chrome.browser.newPage({ viewport: { width: 1280, height: 860 } });
  // What a user does first: open the printed URL (the first topic streams at once), then add a
  // filtered, projected subscription.
  await page.goto(base + '/');
  await page.waitForSelector('#conn-state[data-state="live"]');
  await sleep(4000);
  await page.selectOption('#topic', 'sensors');
  await page.fill('#filter', 'value.temperature_c > 18.0');
  await page.fill('#fields', 'value.sensor_id, value.temperature_c, value.humidity_pct, value.battery_ok');
  await page.press('#filter', 'Enter');
  await sleep(9000);
  await page.click('.sub[data-topic="trades"] .pause');
  await page.click('.sub[data-topic="trades"] tr.rec >> nth=2');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: out, fullPage: true });
  console.log('saved', out);
} finally {
  await chrome.close();
  demo.kill('SIGTERM');
}
