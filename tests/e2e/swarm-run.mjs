// A manual swarm run, not a test: one broadcaster page and N viewer pages in separate browser
// contexts of one headless Chromium, through the signaling server, printing each viewer's stats
// every 3 s. Run it inside a network namespace (docs/SETUP.md), from the workspace root:
//
//   unshare --net bash -c 'ip link set lo up; ip link add v0 type veth peer name v1;
//     ip addr add 192.0.2.1/24 dev v0; ip link set v0 up; ip link set v1 up;
//     ip route add default dev v0; exec node tests/e2e/swarm-run.mjs'
//
// Environment: VIEWERS (2), SECS (30), STAGGER (ms between viewers), PAGE (watch.html or
// embed.html), EXTRA (appended to viewer URLs), CORRUPT_IDX (that viewer loads pkg-test with
// testCorrupt=1), LATE=1 + PLAN=9:start,30:stop,42:start (drive the broadcaster; freezeN/thawN freeze viewer N, blockN
// busies viewer N's main thread for 5 s, reinitN restarts viewer N's player: pkg-test only), QUIET=1 (only
// warnings from the pages), SHOT=1 (screenshots into out/), SIG (signaling binary, default
// target/debug/swarmcast-signaling).
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = process.env.ROOT || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const N = Number(process.env.VIEWERS || 2);
const SECS = Number(process.env.SECS || 30);
const EXTRA = process.env.EXTRA || '';
const bin = process.env.SIG || `${ROOT}/target/debug/swarmcast-signaling`;
const srv = spawn(bin, ['--listen', '127.0.0.1:0', '--static-dir', `${ROOT}/www`], { stdio: ['ignore', 'pipe', 'inherit'] });
const line = await new Promise((res) => readline.createInterface({ input: srv.stdout }).once('line', res));
const base = line.match(/http:\/\/\S+/)[0];
console.log('server', base);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
  '--disable-features=WebRtcHideLocalIpsWithMdns', '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows', '--disable-dev-shm-usage'] });
const t0 = Date.now();
const ts = () => ((Date.now() - t0) / 1000).toFixed(1).padStart(5);
async function open(name, url) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('console', (m) => { const t = m.text(); if (!process.env.QUIET || /error|warn|panic/i.test(m.type() + t)) console.log(`${ts()} [${name}] ${m.type()}: ${t.slice(0, 300)}`); });
  page.on('pageerror', (e) => console.log(`${ts()} [${name}] PAGEERROR ${e.message}`));
  await page.goto(base + url);
  return page;
}
let stream = process.env.STREAM;
let bpage = null;
if (!stream) {
  bpage = await open('bcast', '/broadcast.html?key=new' + (process.env.LATE ? '' : '&autostart=pattern') + (process.env.BEXTRA || ''));
  await bpage.waitForFunction(() => window.swarmcastBroadcaster?.streamId, null, { timeout: 30000 });
  stream = await bpage.evaluate(() => window.swarmcastBroadcaster.streamId);
}
console.log('stream', stream);
const viewers = [];
const samples = [];
for (let i = 0; i < N; i++) {
  const opened = Date.now();
  const page = await open(`v${i}`, `/${process.env.PAGE || "watch.html"}?stream=${encodeURIComponent(stream)}&stats=1${i === Number(process.env.CORRUPT_IDX ?? -1) ? '&pkg=pkg-test&testCorrupt=1' : ''}${EXTRA}`);
  viewers.push(page);
  // Start-up time: page load to the first 'playing' state (playhead moving).
  page.waitForFunction(() => window.swarmcastPlayers?.[0]?.stats()?.state === 'playing', null, { polling: 50, timeout: 0 })
    .then(() => console.log(`${ts()} v${i} STARTUP ${Date.now() - opened} ms after navigation`)).catch(() => {});
  if (process.env.STAGGER) await new Promise((r) => setTimeout(r, Number(process.env.STAGGER)));
}
const plan = (process.env.PLAN || '').split(',').filter(Boolean).map((x) => x.split(':')); // e.g. 9:start,30:stop,40:start
for (let s = 0; s < SECS; s += 3) {
  await new Promise((r) => setTimeout(r, 3000));
  for (const [at, what] of plan) if (Number(at) > s && Number(at) <= s + 3) { console.log(`${ts()} PLAN ${what}`); 
    const ri = what.match(/^reinit(\d+)$/); // player starts over as after a decode error (pkg-test)
    if (ri) { await viewers[Number(ri[1])].evaluate(() => window.swarmcastPlayers[0].peer.testReinit()); continue; }
    const bl = what.match(/^block(\d+)$/); // busy main thread for 5 s (a janky tab)
    if (bl) { viewers[Number(bl[1])].evaluate(() => { const t = performance.now(); while (performance.now() - t < 5000); }).catch(() => {}); continue; }
    const fz = what.match(/^(freeze|thaw)(\d+)$/); // freeze/thaw a viewer page (tab frozen in the background)
    if (fz) { const cdp = await viewers[Number(fz[2])].context().newCDPSession(viewers[Number(fz[2])]); await cdp.send('Page.setWebLifecycleState', { state: fz[1] === 'freeze' ? 'frozen' : 'active' }); continue; }
    await bpage.evaluate((w) => w === 'start' ? window.swarmcastBroadcaster.start('pattern') : window.swarmcastBroadcaster.stop(), what); }
  if (bpage) {
    const b = await bpage.evaluate(() => { try { return JSON.stringify(window.swarmcastBroadcaster.stats?.()?.swarm ?? window.swarmcastBroadcaster.stats?.()); } catch (e) { return String(e); } });
    if (!process.env.QUIET) console.log(`${ts()} bcast ${String(b).slice(0, 400)}`);
  }
  for (const [i, p] of viewers.entries()) {
    const st = await p.evaluate(() => { const s = window.swarmcastPlayers?.[0]?.stats(); const v = document.querySelector('video');
      const b = []; if (v) for (let k = 0; k < v.buffered.length; k++) b.push([+v.buffered.start(k).toFixed(2), +v.buffered.end(k).toFixed(2)]);
      return JSON.stringify({ ...s, buffered: b, paused: v?.paused, err: v?.error?.code }); });
    const o = JSON.parse(st); (samples[i] ??= []).push(o); console.log(`${ts()} v${i} ${o.state} "${o.message}" nb=${o.neighbours} src=${o.bytesFromSource} peers=${o.bytesFromPeers} up=${o.bytesUp} lat=${o.latencyMs?.toFixed(0)} buf=${o.bufferMs?.toFixed(0)} stalls=${o.stalls}/${o.stallMs?.toFixed(0)} t=${o.currentTime?.toFixed(2)} played=${o.segmentsPlayed} skip=${o.segmentsSkipped} cut=${o.forgersCut} conns=${o.connections} reinit=${o.reinits} b=${JSON.stringify(o.buffered)} paused=${o.paused} err=${o.err}`);
  }
}
// Summary per viewer over the samples taken while playing.
for (const [i, list] of samples.entries()) {
  const lat = list.filter((o) => o.state === 'playing' && o.latencyMs != null).map((o) => o.latencyMs).sort((a, b) => a - b);
  const q = (f) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(f * lat.length))].toFixed(0) : '-');
  const last = list[list.length - 1] || {};
  const total = (last.bytesFromPeers || 0) + (last.bytesFromSource || 0);
  console.log(`SUMMARY v${i}: latency ms median ${q(0.5)} p90 ${q(0.9)} max ${q(1)} (${lat.length} samples); stalls ${last.stalls} (${(last.stallMs || 0).toFixed(0)} ms); from peers ${total ? ((100 * last.bytesFromPeers) / total).toFixed(0) : 0} %; segments played ${last.segmentsPlayed}, skipped ${last.segmentsSkipped}; forgers cut ${last.forgersCut}`);
}
if (process.env.SHOT) (await import('node:fs')).mkdirSync(`${ROOT}/out`, { recursive: true });
if (process.env.SHOT) for (const [i, p] of viewers.entries()) await p.screenshot({ path: `${ROOT}/out/v${i}.png` });
await browser.close();
srv.kill();
process.exit(0);
