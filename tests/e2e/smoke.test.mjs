// Smoke test of the environment itself, independent of swarmcast's code: in this network namespace
// and this Chromium, (1) two pages in separate browser contexts open an RTCDataChannel to each
// other (signaling done by the test, through page.evaluate) and (2) a page plays an ffmpeg-made
// fMP4 through MSE. When this fails, the swarm tests cannot pass and the cause is the machine.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';
import {
  Monitor,
  cleanup,
  fixtureMp4,
  launchBrowser,
  openPage,
  outDir,
  sleep,
  startStaticServer,
  summaryLine,
  withTimeout,
} from './harness.mjs';

after(cleanup);

const BLANK = '<!doctype html><meta charset="utf-8"><title>blank</title><body></body>';

// Plays /pattern.mp4 through MSE; `stats()` mimics the real player's fields (latency here is the
// distance to the buffered end, as if the fixture were live).
const PLAYER = `<!doctype html><meta charset="utf-8"><title>mse fixture</title><body>
<video muted playsinline style="width:320px"></video>
<script type="module">
const v = document.querySelector('video');
const ms = new MediaSource();
v.src = URL.createObjectURL(ms);
await new Promise((r) => ms.addEventListener('sourceopen', r, { once: true }));
const sb = ms.addSourceBuffer('video/mp4; codecs="avc1.42C01E"');
const data = await (await fetch('/pattern.mp4')).arrayBuffer();
sb.appendBuffer(data);
await new Promise((r) => sb.addEventListener('updateend', r, { once: true }));
const end = () => (v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0);
window.swarmcastPlayers = [{
  stats: () => ({ state: 'playing', neighbours: 1, bytesFromPeers: data.byteLength, bytesFromSource: 0,
    bytesUp: 0, latencyMs: Math.round((end() - v.currentTime) * 1000), bufferMs: 0, stalls: 0, stallMs: 0,
    currentTime: v.currentTime }),
}];
await v.play();
</script>`;

test('WebRTC data channel between two browser contexts, and MSE playback', { timeout: 120_000 }, async () => {
  const out = outDir('smoke');
  const base = await startStaticServer({
    '/blank.html': { type: 'text/html', body: BLANK },
    '/player.html': { type: 'text/html', body: PLAYER },
    '/pattern.mp4': { type: 'video/mp4', body: fs.readFileSync(fixtureMp4()) },
  });
  const browser = await launchBrowser();
  const a = await openPage(browser, out, 'a', `${base}/blank.html`);
  const b = await openPage(browser, out, 'b', `${base}/blank.html`);

  // --- WebRTC: offer/answer carried by the test, no ICE servers, candidates inside the SDP.
  const t0 = Date.now();
  const offer = await a.page.evaluate(async () => {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    const dc = pc.createDataChannel('smoke');
    window.got = new Promise((resolve) => (dc.onmessage = (e) => resolve(e.data)));
    dc.onopen = () => dc.send('ping from a');
    await pc.setLocalDescription();
    await new Promise((r) => (pc.iceGatheringState === 'complete' ? r() : (pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r())));
    return pc.localDescription.toJSON();
  });
  assert.match(offer.sdp, /a=candidate/, 'Chromium gathered no ICE candidate (is there a default route?)');
  const answer = await b.page.evaluate(async (offer) => {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    window.got = new Promise((resolve) => {
      pc.ondatachannel = ({ channel }) => {
        channel.onmessage = (e) => {
          channel.send('pong from b');
          resolve(e.data);
        };
      };
    });
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription();
    await new Promise((r) => (pc.iceGatheringState === 'complete' ? r() : (pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r())));
    return pc.localDescription.toJSON();
  }, offer);
  await a.page.evaluate((answer) => window.pc.setRemoteDescription(answer), answer);
  const [atB, atA] = await withTimeout(
    Promise.all([b.page.evaluate(() => window.got), a.page.evaluate(() => window.got)]),
    15_000,
    'data channel messages',
  );
  const rtcMs = Date.now() - t0;
  assert.equal(atB, 'ping from a');
  assert.equal(atA, 'pong from b');

  // --- MSE: a fixture page appends the whole fMP4 and plays it, exposing a stand-in
  // `window.swarmcastPlayers` so the harness's Monitor (the same one the swarm tests use) is
  // exercised too: currentTime, decoded frames, stalls.
  const player = await openPage(browser, out, 'player', `${base}/player.html`);
  const monitor = new Monitor(out);
  monitor.add(player);
  monitor.start();
  await monitor.waitStarted(['player'], 15_000);
  const from = Date.now();
  await sleep(3000);
  const to = Date.now();
  await monitor.stop();
  const mse = monitor.figures('player', from, to);
  monitor.writeJson('player', { window: mse });
  await player.page.screenshot({ path: `${out}/player.png` });
  fs.writeFileSync(`${out}/smoke.json`, JSON.stringify({ rtcMs, mse }, null, 1));
  assert.equal(mse.videoError, null);
  assert.deepEqual(mse.pageErrors, []);
  assert.ok(mse.advanceS >= 2, `MSE currentTime advanced only ${mse.advanceS} s in ${mse.windowMs} ms`);
  assert.ok(mse.framesDecoded >= 30, `only ${mse.framesDecoded} frames decoded in ${mse.windowMs} ms`);
  assert.ok(mse.maxStallMs < 1000, `stalled ${mse.maxStallMs} ms`);
  assert.equal(mse.neighboursLast, 1);
  assert.equal(typeof mse.playerLatencyMsMax, 'number', 'stats().latencyMs not collected');
  summaryLine('smoke', [], `data channel ${rtcMs} ms, MSE advance ${mse.advanceS} s in ${mse.windowMs} ms, ${mse.framesDecoded} frames, max stall ${mse.maxStallMs} ms`);
});
