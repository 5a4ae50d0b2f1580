// README's first command opens demo.html: with no action, it must broadcast the test pattern and
// show viewers playing it peer to peer within seconds. This drives that page as a newcomer would
// (load it, wait) against the real signaling server, and checks what the page itself reports.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, test } from 'node:test';
import { cleanup, launchBrowser, openPage, outDir, sleep, startSignaling, waitInPage } from './harness.mjs';

after(cleanup);

test('demo page: test-pattern broadcast and three embedded viewers playing peer to peer, no action', { timeout: 180_000 }, async () => {
  const out = outDir('demo');
  const sig = await startSignaling(out);
  const browser = await launchBrowser();
  const t0 = Date.now();
  const d = await openPage(browser, out, 'demo', `${sig.url}/demo.html`, { viewport: { width: 1400, height: 1000 } });

  const sample = () => d.page.evaluate(() => {
    const demo = window.swarmcastDemo;
    const b = demo?.broadcaster()?.stats();
    const players = (demo?.players() ?? []).map((p) => JSON.parse(JSON.stringify(p.stats())));
    return { streamId: demo?.streamId, b: b && JSON.parse(JSON.stringify(b)), players };
  });
  // All three viewers playing (their own clock advancing), without any click.
  let s;
  for (;;) {
    s = await sample();
    if (s.players.length === 3 && s.players.every((p) => p.state === 'playing' && p.currentTime > 0)) break;
    assert.ok(Date.now() - t0 < 40_000, `viewers not all playing after 40 s: ${JSON.stringify(s.players)} broadcaster ${s.b?.state} ${s.b?.error ?? ''}`);
    await sleep(250);
  }
  const allPlayingMs = Date.now() - t0;
  await sleep(8000);
  s = await sample();
  await d.page.screenshot({ path: path.join(out, 'demo.png') });

  assert.equal(s.b.state, 'live');
  assert.match(s.streamId, /^[A-Za-z0-9_-]{43}$/);
  const fromPeers = s.players.reduce((a, p) => a + p.bytesFromPeers, 0);
  const fromSource = s.players.reduce((a, p) => a + p.bytesFromSource, 0);
  const share = fromPeers / (fromPeers + fromSource);
  for (const p of s.players) {
    assert.equal(p.state, 'playing');
    assert.ok(p.latencyMs > 0 && p.latencyMs < 5000, `viewer latency ${p.latencyMs} ms`);
  }
  assert.ok(share > 0.1, `only ${(share * 100).toFixed(0)} % of the viewers' bytes came from peers`);
  // The source stays within its cap (3x the bitrate by default) even while the swarm forms.
  assert.ok(s.b.uploadKbps != null && s.b.uploadKbps <= s.b.capKbps, `source upload ${s.b.uploadKbps} kbit/s over cap ${s.b.capKbps}`);
  const summary = await d.page.textContent('#summary');
  assert.match(summary, /3\/3 viewers playing/);
  assert.ok(await d.page.getAttribute('#link', 'href').then((h) => h.includes(`watch.html?stream=${s.streamId}`)));
  console.log(`e2e demo: 3 viewers playing ${allPlayingMs} ms after opening demo.html; after 8 s more ${(share * 100).toFixed(0)} % of viewer bytes from peers, ` +
    `source upload ${Math.round(s.b.uploadKbps)} kbit/s for a ${Math.round(s.b.targetKbps)} kbit/s stream, ` +
    `latency ${s.players.map((p) => Math.round(p.latencyMs)).join('/')} ms`);
});
