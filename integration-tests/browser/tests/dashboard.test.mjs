// The dashboard and lakewire-client.js as users meet them: Debian's chromium against a real
// gateway on the real broker. Each test has its own topic and gateway.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Gateway, eventually, freePort, launchBrowser, openPage, produce, rows, sleep, uniqueTopic,
} from './harness.mjs';

let chrome;
before(async () => { chrome = await launchBrowser(); });
after(async () => { await chrome?.close(); });

/** Runs `body(gateway)` with a gateway serving `topic`, created with `partitions` partitions. */
async function withGateway(topic, partitions, extra, body) {
  await produce(topic, partitions, []);
  const gw = new Gateway([topic], { port: await freePort(), extra });
  try {
    await gw.start();
    await body(gw);
  } catch (e) {
    e.message += `\n--- gateway log ---\n${gw.log.slice(-4000)}`;
    throw e;
  } finally {
    await gw.dispose();
  }
}

test('the page loads with no console errors, lists the topic and streams it', async () => {
  const topic = uniqueTopic('dash-load');
  await withGateway(topic, 2, '', async (gw) => {
    const { page, context, problems } = await openPage(chrome.browser, gw.base + '/');
    try {
      await page.waitForSelector('#conn-state[data-state="live"]');
      await page.waitForSelector(`#topic-list button:has-text("${topic}")`);
      assert.match(await page.textContent('#topic-list'), /json · 2 partitions/);
      // With no URL parameters the first topic is subscribed from `latest`.
      await page.waitForSelector(`.sub[data-topic="${topic}"] .sub-stats:has-text("2 partitions")`);
      await produce(topic, 2, Array.from({ length: 10 }, (_, i) => ({ partition: i % 2, key: `k${i}`, value: { n: i } })));
      await eventually('10 rows', async () => (await rows(page)).length === 10);
      // Newest on top: within a partition, offsets go down the table.
      const p0 = (await rows(page)).filter(([p]) => p === 0).map(([, o]) => o);
      assert.deepEqual(p0, [4, 3, 2, 1, 0]);
      // A row expands to its full JSON: the record of that row (record n went to partition
      // n % 2 at offset n / 2).
      const [p, o] = (await rows(page))[0];
      await page.click('.sub tr.rec >> nth=0');
      const json = JSON.parse(await page.textContent('.sub tr.detail pre'));
      assert.deepEqual([json.partition, json.offset, json.key], [p, o, `k${2 * o + p}`]);
      assert.deepEqual(json.value, { n: 2 * o + p });
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});

test('the dashboard agrees permessage-deflate and shows records that came compressed', async () => {
  const topic = uniqueTopic('dash-deflate');
  await withGateway(topic, 1, '', async (gw) => {
    const context = await chrome.browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const page = await context.newPage();
      const problems = [];
      page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
      page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
      // What Chromium offered and what the gateway answered, from the browser's own network log.
      const cdp = await context.newCDPSession(page);
      await cdp.send('Network.enable');
      const handshakes = [];
      cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response));
      await page.goto(`${gw.base}/?topic=${topic}&from=latest`);
      await page.waitForSelector('.sub .sub-stats:has-text("1 partitions")');
      const value = (i) => ({ n: i, user: `user-${i % 5}`, page: '/products/widgets', kind: 'page_view' });
      await produce(topic, 1, Array.from({ length: 200 }, (_, i) => ({ partition: 0, key: `k${i}`, value: value(i) })));
      await eventually('200 rows', async () => (await rows(page)).length === 200);
      const offsets = (await rows(page)).map(([, o]) => o);
      assert.deepEqual(offsets, Array.from({ length: 200 }, (_, i) => 199 - i));
      await page.click('.sub tr.rec >> nth=0');
      assert.deepEqual(JSON.parse(await page.textContent('.sub tr.detail pre')).value, value(199));

      assert.ok(handshakes.length >= 1, 'no WebSocket handshake seen');
      const header = (h, name) => Object.entries(h ?? {}).find(([k]) => k.toLowerCase() === name)?.[1];
      assert.match(header(handshakes[0].requestHeaders, 'sec-websocket-extensions') ?? '', /permessage-deflate/);
      assert.equal(
        header(handshakes[0].headers, 'sec-websocket-extensions'),
        'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
      );
      // The page's own view of a socket to the same endpoint.
      const extensions = await page.evaluate((url) => new Promise((ok, fail) => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ok(ws.extensions); ws.close(); };
        ws.onerror = () => fail(new Error('WebSocket failed'));
      }), gw.base.replace(/^http/, 'ws') + '/ws');
      assert.match(extensions, /^permessage-deflate/);
      // The gateway sent the records compressed, on connections that agreed to it.
      const metrics = await (await fetch(`${gw.base}/metrics`)).text();
      const counter = (name) => Number(metrics.match(new RegExp(`^${name} (\\d+)`, 'm'))?.[1] ?? 0);
      assert.ok(counter('lakewire_ws_deflate_connections_total') >= 1, metrics);
      assert.ok(counter('lakewire_ws_frames_compressed_total') >= 1, metrics);
      assert.equal(counter('lakewire_ws_frames_compressed_total'), counter('lakewire_ws_frames_sent_total'));
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});

test('a subscription with a filter and fields shows exactly the matching records', async () => {
  const topic = uniqueTopic('dash-filter');
  await withGateway(topic, 2, '', async (gw) => {
    const all = Array.from({ length: 90 }, (_, n) => ({
      partition: n % 2, key: `k${n}`, value: { n, kind: n % 3 === 0 ? 'keep' : 'skip', pad: 'x'.repeat(n % 7) },
    }));
    await produce(topic, 2, all);
    const { page, context, problems } = await openPage(chrome.browser, gw.base + '/?auto=0');
    try {
      await page.waitForSelector('#conn-state[data-state="live"]');
      await page.selectOption('#topic', topic);
      await page.fill('#filter', "value.kind == 'keep' && value.n >= 30");
      await page.fill('#fields', 'value.n, value.kind');
      await page.selectOption('#from', 'earliest');
      await page.press('#filter', 'Enter');
      const want = all.filter((r) => r.value.kind === 'keep' && r.value.n >= 30).map((r) => r.value.n);
      await eventually(`${want.length} rows`, async () => (await rows(page)).length >= want.length);
      await sleep(1000); // nothing more may arrive
      const cells = await page.$$eval('.sub tr.rec', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
      const headers = await page.$$eval('.sub thead th', (ths) => ths.map((th) => th.textContent));
      assert.deepEqual(headers, ['p', 'offset', 'time', 'n', 'kind'], 'only the projected fields');
      assert.deepEqual(cells.map((c) => Number(c[3])).sort((a, b) => a - b), want);
      assert.ok(cells.every((c) => c[4] === 'keep'));
      assert.equal(await page.textContent('#filter-error'), '');
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});

test("a bad filter shows the server's bad_filter message next to the input", async () => {
  const topic = uniqueTopic('dash-badfilter');
  await withGateway(topic, 1, '', async (gw) => {
    const { page, context, problems } = await openPage(chrome.browser, gw.base + '/?auto=0');
    try {
      await page.waitForSelector('#conn-state[data-state="live"]');
      await page.selectOption('#topic', topic);
      await page.fill('#filter', 'value.n >');
      await page.click('#subscribe');
      await page.waitForSelector('#filter-error:not(:empty)');
      assert.match(await page.textContent('#filter-error'), /syntax error/i);
      assert.equal(await page.getAttribute('#filter', 'aria-invalid'), 'true');
      assert.equal(await page.$$eval('.sub', (s) => s.length), 0, 'no panel for a refused subscription');
      // A fixed filter subscribes and clears the message.
      await page.fill('#filter', 'value.n > 1');
      assert.equal(await page.textContent('#filter-error'), '');
      await page.press('#filter', 'Enter');
      await page.waitForSelector('.sub .sub-stats:has-text("1 partitions")');
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});

test('the lag badge appears when the page cannot keep up', async () => {
  const topic = uniqueTopic('dash-lag');
  await withGateway(topic, 1, 'queue_size = 16\nslow_client = "drop"', async (gw) => {
    const { page, context, problems } = await openPage(chrome.browser, `${gw.base}/?topic=${topic}`);
    try {
      await page.waitForSelector('.sub .sub-stats:has-text("1 partitions")');
      assert.equal(await page.isVisible('.sub .lag-badge'), false);
      // The page's main thread is blocked while a burst arrives: the browser stops reading the
      // socket, the gateway's queue for this client overflows, and it drops with `lagged`.
      const burst = Array.from({ length: 30000 }, (_, n) => ({ partition: 0, key: 'k', value: { n, pad: 'p'.repeat(900) } }));
      const frozen = page.evaluate(() => { const end = Date.now() + 6000; while (Date.now() < end) { /* busy */ } });
      await produce(topic, 1, burst);
      await frozen;
      await page.waitForSelector('.sub .lag-badge:not([hidden])', { timeout: 20000 });
      assert.match(await page.textContent('.sub .lag-badge'), /lagged: [\d,]+ dropped/);
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});

test('after a gateway restart the client resumes with no missing and no repeated offsets', async () => {
  const topic = uniqueTopic('dash-restart');
  const port = await freePort();
  const batch = (partition, from, count) =>
    Array.from({ length: count }, (_, i) => ({ partition, key: `k${partition}`, value: { n: from + i } }));
  // Before the subscription: not shown by a `latest` subscription, nor after the resume.
  await produce(topic, 2, [...batch(0, 0, 10), ...batch(1, 0, 10)]);
  const gw = new Gateway([topic], { port });
  try {
    await gw.start();
    const { page, context, problems } = await openPage(chrome.browser, `${gw.base}/?topic=${topic}&from=latest`);
    try {
      await page.waitForSelector('.sub .sub-stats:has-text("2 partitions")');
      // Only partition 0 gets records before the restart: the resume must still know where
      // partition 1 was (the `subscribed` frame's start), or it would replay its first 10.
      await produce(topic, 2, batch(0, 10, 20));
      await eventually('20 rows', async () => (await rows(page)).length === 20);

      await gw.stop();
      await page.waitForSelector('#conn-state[data-state="reconnecting"]');
      await produce(topic, 2, [...batch(0, 30, 20), ...batch(1, 10, 20)]);
      await gw.start();
      await page.waitForSelector('#conn-state[data-state="live"]', { timeout: 20000 });
      await produce(topic, 2, batch(1, 30, 5));

      const expected = [];
      for (let o = 10; o < 50; o++) expected.push(`0:${o}`);
      for (let o = 10; o < 35; o++) expected.push(`1:${o}`);
      await eventually(`${expected.length} rows`, async () => (await rows(page)).length >= expected.length, 20000);
      await sleep(1000);
      const seen = (await rows(page)).map(([p, o]) => `${p}:${o}`);
      const repeated = seen.filter((k, i) => seen.indexOf(k) !== i);
      const missing = expected.filter((k) => !seen.includes(k));
      const extra = seen.filter((k) => !expected.includes(k));
      assert.deepEqual({ repeated, missing, extra }, { repeated: [], missing: [], extra: [] });
      // The restart may log a failed WebSocket connection attempt; nothing else.
      assert.deepEqual(problems.filter((p) => !/WebSocket connection to .* failed/.test(p)), []);
    } finally {
      await context.close();
    }
  } catch (e) {
    e.message += `\n--- gateway log ---\n${gw.log.slice(-4000)}`;
    throw e;
  } finally {
    await gw.dispose();
  }
});
