// Forgery (issue 8, point 4): one viewer page loads the test-hooks bundle (`?pkg=pkg-test`, which
// the production `www/pkg` does not contain) with `&testCorrupt=1`, so it corrupts every piece it
// forwards. Every honest viewer must keep playing within the usual bounds, the forger must be cut
// off by the honest viewers it sent to (their `forgersCut`), and no honest player may show a media
// error (forged bytes reaching MSE would make the decoder fail or the clock stop).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';
import {
  Monitor,
  cleanup,
  launchBrowser,
  openBroadcaster,
  openPage,
  openViewers,
  outDir,
  peersConnected,
  sleep,
  startSignaling,
  summaryLine,
  violations,
} from './harness.mjs';

after(cleanup);

const WINDOW_MS = 20_000;
const STARTUP_MS = 45_000;

/** How many forgers a viewer has cut off, whatever the stats field is called. */
function forgersCut(stats) {
  return stats?.forgersCut ?? stats?.forgers_cut ?? stats?.rejectedPeers ?? null;
}

test('a forging viewer is cut off and honest viewers keep playing', { timeout: 180_000 }, async () => {
  const out = outDir('forgery');
  const server = await startSignaling(out);
  const browser = await launchBrowser();
  const source = await openBroadcaster(browser, out, server.url);
  const stream = encodeURIComponent(source.streamId);
  const url = (n) => `${server.url}/watch.html?stream=${stream}&stats=1#${n}`;
  const monitor = new Monitor(out);
  monitor.start();

  // The forger joins first, like the first viewers of a stream, which the source feeds directly
  // and which forward to everyone after them: so honest viewers do get pieces through it.
  const forger = await openPage(browser, out, 'forger', `${server.url}/watch.html?stream=${stream}&stats=1&pkg=pkg-test&testCorrupt=1`);
  const honest = await openViewers(browser, out, url, ['honest0', 'honest1', 'honest2', 'honest3', 'honest4']);
  [...honest, forger].forEach((v) => monitor.add(v));
  await monitor.waitStarted(honest.map((v) => v.name), STARTUP_MS);

  const from = Date.now();
  await sleep(WINDOW_MS);
  const to = Date.now();
  await monitor.stop();
  const figs = honest.map((v) => monitor.figures(v.name, from, to));
  const forgerFig = monitor.figures('forger', from, to);
  const forgerStats = monitor.lastStats('forger');
  // The hooked bundle is really loaded by the forger page (otherwise the test proves nothing).
  const forgerPkg = await forger.page.evaluate(() =>
    performance.getEntriesByType('resource').map((e) => e.name).filter((n) => /\/pkg(-test)?\//.test(n)),
  );
  await honest[honest.length - 1].page.screenshot({ path: `${out}/honest4.png` });
  for (const f of figs) monitor.writeJson(f.name, { window: f });
  monitor.writeJson('forger', { window: forgerFig, pkgFiles: forgerPkg });

  const cut = figs.map((f) => forgersCut(f.lastStats));
  const totalCut = cut.reduce((a, c) => a + (c ?? 0), 0);
  summaryLine('forgery', figs, `forgers cut by honest viewers ${totalCut}, forger up ${forgerStats?.bytesUp ?? '?'} B`);
  fs.writeFileSync(`${out}/forgery.json`, JSON.stringify({ cut, forgerStats, forgerPkg }, null, 1));

  const problems = [];
  for (const f of figs) {
    const bad = violations(f);
    bad.push(...peersConnected(f));
    if (bad.length) problems.push(`${f.name}: ${bad.join('; ')}`);
  }
  if (!forgerPkg.some((n) => n.includes('/pkg-test/'))) problems.push(`forger page did not load pkg-test: ${forgerPkg.join(', ')}`);
  if (!(forgerStats?.bytesUp > 0)) problems.push(`the forger forwarded nothing (bytesUp ${forgerStats?.bytesUp}): nothing was tested`);
  if (cut.every((c) => c === null)) problems.push('viewer stats() report no forgersCut field');
  else if (totalCut < 1) {
    problems.push(`no honest viewer cut the forger off (forgersCut ${cut.join(', ')}; forger bytesUp ${forgerStats?.bytesUp})`);
  }
  assert.deepEqual(problems, [], `see ${out}/*.json and *.console.log`);
});
