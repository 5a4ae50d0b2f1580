// Upload capacity below demand: five viewers that share nothing (`&upload=0`), so only the
// source, capped at 3x the bitrate, can feed them. Graceful degradation means the source keeps
// to its cap, the viewers it can serve play smoothly (the shortage is not smeared over everyone),
// and every viewer that cannot be served says why ("not enough upload in this swarm") instead of
// spinning silently.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';
import { cleanup, openViewers, sleep, startBroadcast, summaryLine } from './harness.mjs';

after(cleanup);

const VIEWERS = 5;
const SETTLE_MS = 25_000;
const WINDOW_MS = 15_000;

test('capacity below demand: the source keeps its cap, some play smoothly, the starved say why', { timeout: 180_000 }, async () => {
  const { out, browser, source, url, monitor } = await startBroadcast('capacity', { viewerQuery: '&upload=0' });
  const viewers = await openViewers(browser, out, url, [...Array(VIEWERS)].map((_, i) => `freerider${i}`));
  viewers.forEach((v) => monitor.add(v));
  await sleep(SETTLE_MS);
  const from = Date.now();
  // The source's own upload figure, sampled over the window (it is a smoothed rate).
  const srcRates = [];
  while (Date.now() - from < WINDOW_MS) {
    const st = await source.stats();
    srcRates.push({ up: st.uploadKbps, cap: st.capKbps, target: st.targetKbps });
    await sleep(1_000);
  }
  const to = Date.now();
  const figs = viewers.map((v) => monitor.figures(v.name, from, to));
  // Whether each viewer said "short of capacity" at any point of the window.
  const said = viewers.map((v) =>
    monitor.viewers.get(v.name).samples.filter((s) => s.wall >= from && s.wall <= to).some((s) => s.stats?.capacityShort === true && /upload/i.test(s.stats?.message ?? '')),
  );
  await monitor.stop();
  for (const [i, v] of viewers.entries()) monitor.writeJson(v.name, { window: figs[i], saidCapacityShort: said[i] });
  fs.writeFileSync(`${out}/source-rates.json`, JSON.stringify(srcRates, null, 1));

  const smooth = figs.map((f) => f.advanceS >= 12 && f.maxStallMs <= 1000);
  const upMax = Math.max(...srcRates.map((r) => r.up ?? 0));
  const cap = srcRates.at(-1)?.cap;
  summaryLine(
    'capacity',
    figs,
    `free riders only: ${smooth.filter(Boolean).length}/${VIEWERS} smooth, ${said.filter(Boolean).length}/${VIEWERS} said "short of upload"; ` +
      `source upload max ${Math.round(upMax)} kbit/s (cap ${Math.round(cap)}, stream ${Math.round(srcRates.at(-1)?.target)})`,
  );

  const problems = [];
  if (!(cap > 0)) problems.push(`broadcaster reports no cap (${cap})`);
  else if (!(upMax <= cap)) problems.push(`source upload ${upMax} kbit/s over its cap ${cap}`);
  if (!smooth.some(Boolean)) problems.push('no viewer played smoothly: the shortage was spread over everyone');
  for (const [i, f] of figs.entries()) {
    if (!smooth[i] && !said[i]) problems.push(`${f.name} did not play smoothly (advance ${f.advanceS} s, stall ${f.maxStallMs} ms) and never said why`);
    if (f.pageErrors.length) problems.push(`${f.name}: page errors ${f.pageErrors.join(' | ')}`);
  }
  assert.deepEqual(problems, [], `see ${out}/*.json and *.console.log`);
});
