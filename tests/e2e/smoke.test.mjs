// Smoke test of the environment itself, independent of swarmcast's code: in this network namespace
// and this Chromium, (1) two pages in separate browser contexts open an RTCDataChannel to each
// other (signaling done by the test, through page.evaluate) and (2) a page plays an ffmpeg-made
// fMP4 through MSE. When this fails, the swarm tests cannot pass and the cause is the machine.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';
import {
  cleanup,
  fixtureMp4,
  launchBrowser,
  openPage,
  outDir,
  startStaticServer,
  summaryLine,
  withTimeout,
} from './harness.mjs';

after(cleanup);

const BLANK = '<!doctype html><meta charset="utf-8"><title>blank</title><body></body>';

test('WebRTC data channel between two browser contexts, and MSE playback', { timeout: 120_000 }, async () => {
  const out = outDir('smoke');
  const base = await startStaticServer({
    '/blank.html': { type: 'text/html', body: BLANK },
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

  // --- MSE: append the whole fixture, play, and check the clock and the decoder both move.
  const mse = await a.page.evaluate(async () => {
    const v = document.createElement('video');
    v.muted = true;
    document.body.append(v);
    const ms = new MediaSource();
    v.src = URL.createObjectURL(ms);
    await new Promise((r) => ms.addEventListener('sourceopen', r, { once: true }));
    const sb = ms.addSourceBuffer('video/mp4; codecs="avc1.42C01E"');
    const data = await (await fetch('/pattern.mp4')).arrayBuffer();
    sb.appendBuffer(data);
    await new Promise((r) => sb.addEventListener('updateend', r, { once: true }));
    await v.play();
    const t0 = v.currentTime;
    const f0 = v.getVideoPlaybackQuality().totalVideoFrames;
    await new Promise((r) => setTimeout(r, 3000));
    return {
      advance: v.currentTime - t0,
      frames: v.getVideoPlaybackQuality().totalVideoFrames - f0,
      error: v.error && v.error.message,
    };
  });
  await a.page.screenshot({ path: `${out}/mse.png` });
  fs.writeFileSync(`${out}/smoke.json`, JSON.stringify({ rtcMs, mse }, null, 1));
  assert.equal(mse.error, null);
  assert.ok(mse.advance >= 2, `MSE currentTime advanced only ${mse.advance} s in 3 s`);
  assert.ok(mse.frames >= 30, `only ${mse.frames} frames decoded in 3 s`);
  summaryLine('smoke', [], `data channel ${rtcMs} ms, MSE advance ${mse.advance.toFixed(2)} s / 3 s, ${mse.frames} frames`);
});
