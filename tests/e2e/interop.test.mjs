// Interop (issue 8, point 5): the npm `bittorrent-tracker` server (the WebTorrent reference
// implementation) is the only tracker. Our server still serves the pages, but every page is told
// `&tracker=ws://127.0.0.1:PORT`, so all peers meet through the npm tracker and still play.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  Monitor,
  cleanup,
  launchBrowser,
  openBroadcaster,
  openViewers,
  outDir,
  peersConnected,
  sleep,
  startNpmTracker,
  startSignaling,
  summaryLine,
  violations,
} from './harness.mjs';

after(cleanup);

const VIEWERS = 4;
const WINDOW_MS = 20_000;
const STARTUP_MS = 45_000;

test('peers meet through the npm bittorrent-tracker server and play', { timeout: 180_000 }, async () => {
  const out = outDir('interop');
  const tracker = await startNpmTracker();
  const server = await startSignaling(out);
  const browser = await launchBrowser();
  const t = `&tracker=${encodeURIComponent(tracker.url)}`;
  const source = await openBroadcaster(browser, out, server.url, t);
  const url = (n) => `${server.url}/watch.html?stream=${encodeURIComponent(source.streamId)}&stats=1${t}#${n}`;
  const monitor = new Monitor(out);
  monitor.start();
  const viewers = await openViewers(browser, out, url, [...Array(VIEWERS)].map((_, i) => `viewer${i}`));
  viewers.forEach((v) => monitor.add(v));
  await monitor.waitStarted(viewers.map((v) => v.name), STARTUP_MS);
  const from = Date.now();
  await sleep(WINDOW_MS);
  const to = Date.now();
  await monitor.stop();
  const figs = viewers.map((v) => monitor.figures(v.name, from, to));
  for (const f of figs) monitor.writeJson(f.name, { window: f });
  await viewers[0].page.screenshot({ path: `${out}/viewer0.png` });
  // Our server only served the pages: no page may have connected to its tracker endpoint.
  const metrics = await fetch(`${server.url}/metrics`).then((r) => r.text()).catch(() => '');
  const ourConnections = /^swarmcast_signaling_connections_total (\d+)/m.exec(metrics)?.[1];

  summaryLine(
    'interop',
    figs,
    `npm tracker saw ${tracker.seen.announces} announces, ${tracker.seen.offers} offers, ${tracker.seen.answers} answers; our server ${ourConnections ?? '?'} WebSocket connections`,
  );

  const problems = [];
  if (ourConnections !== undefined && ourConnections !== '0') {
    problems.push(`${ourConnections} WebSocket connections reached our signaling server, which was not a tracker here`);
  }
  for (const f of figs) {
    const bad = violations(f);
    bad.push(...peersConnected(f));
    if (bad.length) problems.push(`${f.name}: ${bad.join('; ')}`);
  }
  if (tracker.seen.announces < VIEWERS + 1) problems.push(`the npm tracker saw only ${tracker.seen.announces} announces`);
  if (tracker.seen.answers < 1) problems.push('no answer was relayed by the npm tracker');
  assert.deepEqual(problems, [], `see ${out}/*.json and *.console.log`);
});
