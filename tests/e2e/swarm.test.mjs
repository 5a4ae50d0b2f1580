// The main real-browser run (issue 8, points 1–3 and 6): our signaling server, one broadcaster page
// streaming the test pattern, eight viewer pages in separate browser contexts, all over real WebRTC
// data channels and real MSE. Then churn: half the viewers leave, as many new ones join, and every
// viewer still on the page must keep playing within the same bounds.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';
import {
  cleanup,
  openViewers,
  peersConnected,
  sleep,
  sourceBytesUp,
  startBroadcast,
  summaryLine,
  violations,
} from './harness.mjs';

after(cleanup);

const VIEWERS = 8;
const WINDOW_MS = 20_000;
const STARTUP_MS = 45_000;

test('broadcaster + 8 viewers play live over WebRTC, through churn', { timeout: 240_000 }, async () => {
  const { out, browser, source, url, monitor } = await startBroadcast('swarm');
  // The broadcaster's own figures once a second, for reading a failure (source.json).
  const sourceSamples = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const st = await source.stats().catch(() => null);
      if (st) sourceSamples.push({ wall: Date.now(), encoder: st.encoder, swarm: st.swarm });
      await sleep(1000);
    }
  })();

  const first = await openViewers(browser, out, url, [...Array(VIEWERS)].map((_, i) => `viewer${i}`));
  first.forEach((v) => monitor.add(v));
  await monitor.waitStarted(first.map((v) => v.name), STARTUP_MS);

  // Phase 1: every viewer, 20 s of wall time once all play.
  const from1 = Date.now();
  await sleep(WINDOW_MS);
  const to1 = Date.now();
  const figs1 = first.map((v) => monitor.figures(v.name, from1, to1));
  const src1 = await source.stats();
  await first[0].page.screenshot({ path: `${out}/viewer0.png` });
  await source.page.screenshot({ path: `${out}/broadcaster.png` });

  // Phase 2: churn. The first half leave (closing the context = tab closed); new viewers join.
  const leaving = first.slice(0, VIEWERS / 2);
  const staying = first.slice(VIEWERS / 2);
  for (const v of leaving) {
    monitor.remove(v.name);
    // Marks in the logs of the pages that stay, to line their reactions up with the departure.
    for (const p of [source, ...staying]) p.log(`${v.name} leaves (browser context closed)`);
    await v.close();
  }
  const joined = await openViewers(browser, out, url, [...Array(VIEWERS / 2)].map((_, i) => `joined${i}`));
  joined.forEach((v) => monitor.add(v));
  await monitor.waitStarted(joined.map((v) => v.name), STARTUP_MS);
  const from2 = Date.now();
  await sleep(WINDOW_MS);
  const to2 = Date.now();
  const churnFigs = [...staying, ...joined].map((v) => monitor.figures(v.name, from2, to2));
  const src2 = await source.stats();
  await joined[0].page.screenshot({ path: `${out}/joined0.png` });
  await monitor.stop();
  sampling = false;
  await sampler;

  for (const v of [...first, ...joined]) {
    const figures = {};
    const f1 = figs1.find((f) => f.name === v.name);
    const f2 = churnFigs.find((f) => f.name === v.name);
    if (f1) figures.phase1 = f1;
    if (f2) figures.churn = f2;
    monitor.writeJson(v.name, figures);
  }
  const published = await source.published().catch(() => null);
  fs.writeFileSync(`${out}/source.json`, JSON.stringify({ phase1: src1, churn: src2, published, samples: sourceSamples }, null, 1));

  // How steadily the source published: a long gap means the broadcaster itself paused (its page
  // starved of CPU), not the swarm.
  let publishGapMs = null;
  if (published && published.length > 1) {
    publishGapMs = 0;
    for (let i = 1; i < published.length; i++) {
      publishGapMs = Math.max(publishGapMs, Math.round((published[i].atUs - published[i - 1].atUs) / 1000));
    }
  }
  const received1 = figs1.reduce((a, f) => a + f.bytesReceived, 0);
  const srcUp1 = sourceBytesUp(src1);
  summaryLine('swarm', figs1, `source up ${srcUp1 === null ? '?' : (srcUp1 / 1e6).toFixed(2)} MB`);
  summaryLine('swarm-churn', churnFigs, `source up ${sourceBytesUp(src2) === null ? '?' : (sourceBytesUp(src2) / 1e6).toFixed(2)} MB total, longest gap between the source's publications ${publishGapMs ?? '?'} ms`);

  const problems = [];
  for (const f of figs1) {
    const bad = violations(f);
    bad.push(...peersConnected(f));
    if (bad.length) problems.push(`${f.name}: ${bad.join('; ')}`);
  }
  for (const f of churnFigs) {
    const bad = violations(f);
    bad.push(...peersConnected(f));
    if (bad.length) problems.push(`${f.name} (after churn): ${bad.join('; ')}`);
  }
  if (srcUp1 === null) problems.push('broadcaster stats() has no bytesUp');
  else if (!(srcUp1 < received1 / 2)) {
    problems.push(`source uploaded ${srcUp1} B, not under half of the ${received1} B the viewers received`);
  }
  // Over the whole run: everything the source sent against everything every viewer received
  // (those that left count with their last figures).
  const receivedAll = [...first, ...joined].reduce((a, v) => {
    const s = monitor.lastStats(v.name);
    return a + (s ? (s.bytesFromPeers ?? 0) + (s.bytesFromSource ?? 0) : 0);
  }, 0);
  const srcUp2 = sourceBytesUp(src2);
  if (srcUp2 !== null && !(srcUp2 < receivedAll / 2)) {
    problems.push(`over the run the source uploaded ${srcUp2} B, not under half of the ${receivedAll} B received`);
  }
  assert.deepEqual(problems, [], `see ${out}/*.json and *.console.log`);
});
