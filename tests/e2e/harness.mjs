// Shared machinery of the real-browser tests: the signaling server and the npm tracker as child
// processes / in-process servers, one headless Chromium (Debian's, driven over CDP by
// playwright-core), pages in separate browser contexts, and per-viewer figures gathered by polling
// the page. Everything a test starts is registered here and torn down in `cleanup()`, which also
// runs on process exit and on SIGINT/SIGTERM, so a failing test leaves no process behind. (xtask
// additionally runs the suite in its own PID namespace, which the kernel empties when it ends.)

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const OUT_ROOT = path.join(ROOT, 'out/e2e');
export const CHROMIUM = process.env.SWARMCAST_CHROMIUM || '/usr/bin/chromium';
export const SIGNALING_BIN =
  process.env.SWARMCAST_SIGNALING || path.join(ROOT, 'target/ci/swarmcast-signaling');

/** Chromium flags (docs/SETUP.md). mDNS hiding is off so host candidates are the namespace's
 * veth address (192.0.2.1): no dependence on Chromium's mDNS responder between contexts. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-breakpad',
  '--disable-crash-reporter',
  '--disable-dev-shm-usage',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  // Headless pages are all "visible", but keep timers of every page running at full rate anyway:
  // ten pages share two cores and throttled timers would look like stalls.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

/** When this test process started: the zero of every `[12.34s]` stamp in the console logs. */
const T0 = Date.now();

const cleanups = [];
const childPids = new Set();

/** Registers a teardown step; `cleanup()` runs them newest first. */
export function onCleanup(fn) {
  cleanups.push(fn);
}

/** Runs every registered teardown step (each at most once), swallowing their errors. */
export async function cleanup() {
  while (cleanups.length) {
    const fn = cleanups.pop();
    try {
      await withTimeout(Promise.resolve().then(fn), 10_000, 'cleanup step');
    } catch (e) {
      console.error(`cleanup: ${e.message}`);
    }
  }
}

// Last resort when the test process dies without reaching `cleanup()`: kill our children by PID.
// (playwright-core kills the browsers it launched on exit by itself.)
function killChildrenSync() {
  for (const pid of childPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  childPids.clear();
}
process.on('exit', killChildrenSync);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killChildrenSync();
    process.exit(130);
  });
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

export async function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** A fresh output folder for one test: `out/e2e/<name>/`. */
export function outDir(name) {
  const dir = path.join(OUT_ROOT, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Starts `swarmcast-signaling --listen 127.0.0.1:0 --static-dir www` and waits for its first
 * stdout line, `listening on http://127.0.0.1:PORT`. Its output goes to `<out>/signaling.log`.
 */
export async function startSignaling(out, { staticDir = path.join(ROOT, 'www') } = {}) {
  if (!fs.existsSync(SIGNALING_BIN)) {
    throw new Error(
      `${SIGNALING_BIN} missing: build it with \`cargo build --profile ci -p swarmcast-signaling\` (cargo xtask e2e does)`,
    );
  }
  const log = fs.createWriteStream(path.join(out, 'signaling.log'));
  const proc = spawn(SIGNALING_BIN, ['--listen', '127.0.0.1:0', '--static-dir', staticDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
  });
  childPids.add(proc.pid);
  const exited = once(proc, 'exit');
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    }
    childPids.delete(proc.pid);
    log.end();
  };
  onCleanup(stop);
  proc.stderr.pipe(log, { end: false });
  const lines = readline.createInterface({ input: proc.stdout });
  const first = new Promise((resolve, reject) => {
    lines.once('line', resolve);
    proc.once('exit', (code, sig) =>
      reject(new Error(`signaling server exited early (code ${code}, signal ${sig}); see ${out}/signaling.log`)),
    );
  });
  const line = await withTimeout(first, 15_000, 'signaling server start');
  log.write(`${line}\n`);
  lines.on('line', (l) => log.write(`${l}\n`));
  const m = /listening on (http:\/\/[^\s/]+)/.exec(line);
  if (!m) throw new Error(`signaling server's first line is not "listening on http://…": ${line}`);
  const url = m[1];
  return { url, wsUrl: `${url.replace(/^http/, 'ws')}/announce`, pid: proc.pid, stop };
}

/**
 * Starts the npm `bittorrent-tracker` server (WebSocket only) on 127.0.0.1, in this process.
 * Returns its `ws://` URL and a count of the announces it saw, so a test can tell it was used.
 */
export async function startNpmTracker() {
  // The server entry point only: the package's index also loads its WebRTC client, whose native
  // module (node-datachannel) is not built here (install scripts are off, see .npmrc).
  const { default: Server } = await import('bittorrent-tracker/server');
  const server = new Server({ udp: false, http: false, ws: true, stats: false });
  const seen = { announces: 0, offers: 0, answers: 0 };
  server.on('warning', (e) => console.error(`npm tracker warning: ${e.message}`));
  server.on('error', (e) => console.error(`npm tracker error: ${e.message}`));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  // Count what passes through it (it calls this method per WebSocket message, with the raw
  // text): announces, and the offers and answers it relays, which prove the peers met through it.
  const orig = server._onWebSocketRequest.bind(server);
  server._onWebSocketRequest = (socket, opts, raw) => {
    try {
      const m = JSON.parse(raw);
      if (m.action === 'announce') {
        if (m.answer) seen.answers++;
        else seen.announces++;
        if (Array.isArray(m.offers)) seen.offers += m.offers.length;
      }
    } catch {}
    return orig(socket, opts, raw);
  };
  const { port } = server.ws.address();
  const stop = () =>
    new Promise((resolve) => {
      server.http?.closeAllConnections?.();
      server.close(() => resolve());
    });
  onCleanup(stop);
  return { url: `ws://127.0.0.1:${port}`, seen, stop };
}

/** A tiny static HTTP server on 127.0.0.1 for fixtures (the smoke test needs no swarmcast code). */
export async function startStaticServer(files) {
  const server = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': f.type, 'cache-control': 'no-store' });
    res.end(f.body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(
    () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${server.address().port}`;
}

/** Launches Debian's Chromium headless (never a downloaded one: no `playwright install`). */
export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing (apt-get install chromium)`);
  const browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }),
    60_000,
    'chromium launch',
  );
  onCleanup(() => browser.close());
  return browser;
}

/**
 * Launches a second, separate Chromium (its own process tree) whose pages can be made to vanish
 * at once: `kill()` sends SIGKILL to that browser, so its peers send no goodbye, no `stopped`
 * announce and no SCTP shutdown: the departure a crashed tab or a pulled cable looks like.
 */
export async function launchKillableBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing (apt-get install chromium)`);
  const server = await withTimeout(
    chromium.launchServer({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }),
    60_000,
    'chromium launchServer',
  );
  const pid = server.process().pid;
  childPids.add(pid);
  onCleanup(() => server.kill());
  const browser = await withTimeout(chromium.connect(server.wsEndpoint()), 30_000, 'chromium connect');
  const kill = async () => {
    // BrowserServer.kill() SIGKILLs the browser process (ours, started above) and waits for it.
    await withTimeout(server.kill(), 15_000, 'killing the second browser');
    childPids.delete(pid);
  };
  return { browser, pid, kill };
}

/**
 * Opens `url` in a new browser context (its own cookies, storage and WebRTC stack, like a separate
 * person). The page's console and errors go to `<out>/<name>.console.log`.
 */
export async function openPage(browser, out, name, url, { viewport = { width: 640, height: 400 } } = {}) {
  const context = await browser.newContext({ viewport });
  const log = fs.createWriteStream(path.join(out, `${name}.console.log`));
  // One time base for every log of a test process, so pages' logs line up with each other.
  const stamp = () => `[${((Date.now() - T0) / 1000).toFixed(2).padStart(7)}s]`;
  const errors = [];
  const page = await context.newPage();
  page.on('console', (m) => log.write(`${stamp()} ${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => {
    errors.push(String(e));
    log.write(`${stamp()} PAGEERROR: ${e.stack || e}\n`);
  });
  page.on('crash', () => {
    errors.push('page crashed');
    log.write(`${stamp()} CRASH\n`);
  });
  page.on('requestfailed', (r) => log.write(`${stamp()} REQUESTFAILED: ${r.url()} ${r.failure()?.errorText}\n`));
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    // Bounded: closing the context of a crashed page can hang; the browser's own close at the
    // end of the test takes whatever is left.
    await withTimeout(context.close(), 5_000, `closing ${name}`).catch((e) => log.write(`${e.message}\n`));
    log.end();
  };
  onCleanup(close);
  log.write(`${stamp()} goto ${url}\n`);
  await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  return { name, page, context, url, errors, close, log: (s) => log.write(`${stamp()} harness: ${s}\n`) };
}

/** Waits until `fn` (evaluated in the page) returns a truthy value; returns it. */
export async function waitInPage(page, fn, arg, { timeout = 20_000, what = 'condition' } = {}) {
  const handle = await page
    .waitForFunction(fn, arg, { timeout, polling: 200 })
    .catch((e) => {
      throw new Error(`${what}: ${e.message.split('\n')[0]}`);
    });
  return handle.jsonValue();
}

/**
 * Reads the timecode strip the broadcaster's test pattern draws along the bottom edge (43 cells:
 * white, black, then the capture time in ms since the epoch as 41 bits, MSB first) from the frame
 * the `<video>` shows now. Returns `{ frameMs, latencyMs }` or null when unreadable. Runs in the
 * page; this is the test's own latency measurement, independent of the player's `latencyMs`.
 */
function readTimecode(v) {
  const w = v.videoWidth;
  const h = v.videoHeight;
  if (!w || !h || v.readyState < 2) return null;
  const ch = Math.max(8, Math.round(h * 0.035));
  const c = (window.__e2eTimecodeCanvas ||= document.createElement('canvas'));
  if (c.width !== w || c.height !== ch) Object.assign(c, { width: w, height: ch });
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, h - ch, w, ch, 0, 0, w, ch);
  const now = performance.timeOrigin + performance.now();
  const px = ctx.getImageData(0, 0, w, ch).data;
  const cells = 43;
  const lum = (i) => {
    let sum = 0;
    let n = 0;
    for (let y = Math.floor(ch * 0.3); y < Math.ceil(ch * 0.7); y++) {
      for (let x = Math.floor(((i + 0.3) * w) / cells); x < Math.ceil(((i + 0.7) * w) / cells); x++) {
        const o = (y * w + x) * 4;
        sum += px[o] + px[o + 1] + px[o + 2];
        n += 3;
      }
    }
    return sum / n;
  };
  const white = lum(0);
  const black = lum(1);
  if (white - black < 96) return null;
  const mid = (white + black) / 2;
  let ms = 0;
  for (let i = 2; i < cells; i++) ms = ms * 2 + (lum(i) > mid ? 1 : 0);
  // A misread gives an absurd time; only a frame from the last minute counts.
  if (!(now - ms > -1000 && now - ms < 60_000)) return null;
  return { frameMs: ms, latencyMs: Math.round(now - ms) };
}

const READ_TIMECODE_SRC = readTimecode.toString();

/**
 * One sample of a viewer page: the player's own `stats()` and what the `<video>` element says.
 * Runs in the page; never throws (a missing player is reported as such).
 */
function sampleInPage(readTimecodeSrc) {
  const v = document.querySelector('video');
  const readTimecode = (window.__e2eReadTimecode ||= new Function(`return (${readTimecodeSrc})`)());
  let timecode = null;
  try {
    timecode = v ? readTimecode(v) : null;
  } catch (e) {
    timecode = { error: String(e) };
  }
  const players = window.swarmcastPlayers;
  let stats = null;
  let statsError = null;
  try {
    const p = players && players[0];
    stats = p && typeof p.stats === 'function' ? p.stats() : null;
    // Plain-object copy: stats() may return a wasm-owned or Map-like value.
    if (stats instanceof Map) stats = Object.fromEntries(stats);
    stats = stats ? JSON.parse(JSON.stringify(stats)) : null;
  } catch (e) {
    statsError = String(e);
  }
  const q = v && v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
  const buffered = [];
  if (v) for (let i = 0; i < v.buffered.length; i++) buffered.push([v.buffered.start(i), v.buffered.end(i)]);
  // The media time of the frame last presented (requestVideoFrameCallback): currentTime minus it
  // is how far the picture lags the playback clock (decoder starved), which tells a wrong
  // latency mapping in the player from a picture that really is late.
  if (v && !v.__e2eFrames && v.requestVideoFrameCallback) {
    v.__e2eFrames = { last: null };
    const onFrame = (_, meta) => {
      v.__e2eFrames.last = meta.mediaTime;
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }
  const frameLagMs =
    v && v.__e2eFrames && v.__e2eFrames.last !== null ? Math.round((v.currentTime - v.__e2eFrames.last) * 1000) : null;
  const overlay = document.querySelector('.sc-stats');
  return {
    wall: performance.timeOrigin + performance.now(),
    hasPlayer: !!(players && players.length),
    overlay: overlay && !overlay.hidden ? overlay.textContent : null,
    timecode,
    frameLagMs,
    stats,
    statsError,
    video: v
      ? {
          currentTime: v.currentTime,
          paused: v.paused,
          readyState: v.readyState,
          error: v.error ? `${v.error.code}: ${v.error.message}` : null,
          buffered,
          totalFrames: q ? q.totalVideoFrames : null,
          droppedFrames: q ? q.droppedVideoFrames : null,
        }
      : null,
  };
}

/** `neighbours` may be a count or a list; either way, how many. */
export function neighbourCount(stats) {
  const n = stats?.neighbours;
  if (Array.isArray(n)) return n.length;
  if (typeof n === 'number') return n;
  return 0;
}

/**
 * Polls a set of viewer pages and turns the samples into per-viewer figures. A viewer "starts"
 * when its currentTime first advances while it plays (not paused); stalls are spans of wall time
 * after that in which currentTime did not move.
 */
export class Monitor {
  constructor(out, { intervalMs = 250 } = {}) {
    this.out = out;
    this.intervalMs = intervalMs;
    /** `{ wall, load1 }` per polling round (1-minute load average). */
    this.load = [];
    this.viewers = new Map(); // name -> { viewer, samples, ... }
    this.running = false;
  }

  add(viewer) {
    this.viewers.set(viewer.name, { viewer, samples: [], startedAt: null, gone: false });
  }

  /** Stops polling `name` (e.g. the viewer leaves); its samples are kept. */
  remove(name) {
    const v = this.viewers.get(name);
    if (v) v.gone = true;
  }

  start() {
    this.running = true;
    // A failing test never reaches stop(): without this the polling loop keeps the process alive.
    onCleanup(() => this.stop());
    this.loop = (async () => {
      while (this.running) {
        const t = Date.now();
        // The host's load with each round of samples: a failure on a box whose run queue is far
        // above its cores (a broadcaster page, a server and a dozen browser contexts on 2 cores,
        // or other work beside the suite) must say so (issue 22), not pass for the product's.
        this.load.push({ wall: t, load1: os.loadavg()[0] });
        await Promise.all(
          [...this.viewers.values()]
            .filter((v) => !v.gone)
            .map(async (v) => {
              try {
                const s = await v.viewer.page.evaluate(sampleInPage, READ_TIMECODE_SRC);
                v.samples.push(s);
                if (v.startedAt === null && v.samples.length >= 2) {
                  const prev = v.samples[v.samples.length - 2];
                  // Playing, not just moved: the player's fast start sets currentTime while the
                  // video is still paused waiting for data, and a CI run counted a viewer as
                  // started there, measuring its still first frame aging to 3.4 s as latency.
                  const playing = (x) => x.video && !x.video.paused;
                  if (playing(s) && playing(prev) && s.video.currentTime > prev.video.currentTime) {
                    v.startedAt = prev.wall;
                  }
                }
              } catch (e) {
                if (!v.gone) v.samples.push({ wall: Date.now(), evalError: String(e).split('\n')[0] });
              }
            }),
        );
        await sleep(Math.max(0, this.intervalMs - (Date.now() - t)));
      }
    })();
  }

  async stop() {
    this.running = false;
    await this.loop;
    this.loop = null;
  }

  /** Waits until every listed viewer has started playing; returns how long each took. */
  async waitStarted(names, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (names.every((n) => this.viewers.get(n).startedAt !== null)) return;
      await sleep(200);
    }
    const late = names.filter((n) => this.viewers.get(n).startedAt === null);
    const state = (n) => {
      const s = this.viewers.get(n).samples.at(-1);
      if (!s) return `${n} (no sample)`;
      if (s.evalError) return `${n} (${s.evalError})`;
      const st = s.stats;
      return `${n} (state ${st?.state}${st?.message ? ` "${st.message}"` : ''}, neighbours ${neighbourCount(st)}, ` +
        `from peers ${st?.bytesFromPeers} B, from source ${st?.bytesFromSource} B, ` +
        `video readyState ${s.video?.readyState} t=${s.video?.currentTime} error ${s.video?.error})`;
    };
    throw new Error(`viewers never started playing within ${timeoutMs} ms: ${late.map(state).join('; ')}`);
  }

  /**
   * Figures of one viewer over the wall-clock window [from, to] (ms since epoch, page clock =
   * host clock: same machine).
   */
  figures(name, from, to) {
    const v = this.viewers.get(name);
    const all = v.samples.filter((s) => s.video);
    const win = all.filter((s) => s.wall >= from && s.wall <= to);
    const first = win[0];
    const last = win[win.length - 1];
    let maxStallMs = 0;
    let stallStart = null;
    let prev = null;
    for (const s of win) {
      if (prev) {
        const moved = s.video.currentTime > prev.video.currentTime;
        if (!moved && stallStart === null) stallStart = prev.wall;
        if (moved && stallStart !== null) {
          // The stall ended somewhere between the two samples: count up to the earlier one, so
          // the poll interval itself does not count as stall time.
          maxStallMs = Math.max(maxStallMs, prev.wall - stallStart);
          stallStart = null;
        }
      }
      prev = s;
    }
    if (stallStart !== null && prev) maxStallMs = Math.max(maxStallMs, prev.wall - stallStart);
    // Longest span in which no media bytes arrived at all (a counter that drops means the
    // player's SwarmPeer was rebuilt: that counts as arrival). Tells "the swarm delivered nothing"
    // from "data arrived but the player did not play it".
    let longestNoBytesMs = 0;
    {
      let since = null;
      let prevBytes = null;
      for (const s of win) {
        if (!s.stats) continue;
        const b = (s.stats.bytesFromPeers ?? 0) + (s.stats.bytesFromSource ?? 0);
        if (prevBytes === null || b !== prevBytes) since = s.wall;
        else longestNoBytesMs = Math.max(longestNoBytesMs, s.wall - since);
        prevBytes = b;
      }
    }
    const lat = win.map((s) => s.stats?.latencyMs).filter((x) => typeof x === 'number' && isFinite(x));
    const tc = win.map((s) => s.timecode?.latencyMs).filter((x) => typeof x === 'number');
    const median = (xs) => (xs.length ? Math.round([...xs].sort((a, b) => a - b)[xs.length >> 1]) : null);
    const lastStats = [...win].reverse().find((s) => s.stats)?.stats ?? null;
    const received = lastStats ? (lastStats.bytesFromPeers ?? 0) + (lastStats.bytesFromSource ?? 0) : 0;
    return {
      name,
      url: v.viewer.url,
      startupMs: v.startedAt !== null ? Math.round(v.startedAt - (all[0]?.wall ?? v.startedAt)) : null,
      windowMs: first && last ? Math.round(last.wall - first.wall) : 0,
      samples: win.length,
      advanceS: first && last ? +(last.video.currentTime - first.video.currentTime).toFixed(3) : 0,
      maxStallMs: Math.round(maxStallMs),
      longestNoBytesMs: Math.round(longestNoBytesMs),
      // Starvation of the test itself: the longest time between two of this viewer's samples
      // (polled every intervalMs), and the host's highest 1-minute load in the window.
      sampleGapMsMax: Math.round(win.slice(1).reduce((m, s, i) => Math.max(m, s.wall - win[i].wall), 0)),
      hostLoadMax: +Math.max(0, ...this.load.filter((l) => l.wall >= from && l.wall <= to).map((l) => l.load1)).toFixed(2),
      cores: os.cpus().length,
      framesDecoded: first && last ? last.video.totalFrames - first.video.totalFrames : 0,
      framesDropped: first && last ? last.video.droppedFrames - first.video.droppedFrames : 0,
      // Latency as the test measures it: wall now minus the capture time read from the frame.
      latencyMsMax: tc.length ? Math.max(...tc) : null,
      latencyMsMedian: median(tc),
      timecodeReads: `${tc.length}/${win.length}`,
      // The player's own figure (stats().latencyMs), for comparison.
      playerLatencyMsMax: lat.length ? Math.round(Math.max(...lat)) : null,
      playerLatencyMsMin: lat.length ? Math.round(Math.min(...lat)) : null,
      playerLatencyMsMedian: median(lat),
      // How far the player's figure is from the test's, per sample (median): a check of the
      // player's timeline mapping.
      frameLagMsMedian: median(win.map((s) => s.frameLagMs).filter((x) => typeof x === 'number')),
      playerMinusTimecodeMs: median(
        win
          .filter((s) => typeof s.stats?.latencyMs === 'number' && typeof s.timecode?.latencyMs === 'number')
          .map((s) => s.stats.latencyMs - s.timecode.latencyMs),
      ),
      neighboursMin: win.length ? Math.min(...win.map((s) => neighbourCount(s.stats))) : 0,
      neighboursLast: neighbourCount(lastStats),
      // What the visible stats overlay (`&stats=1`) says about neighbours at the end.
      overlayNeighbours: (() => {
        const o = [...win].reverse().find((s) => s.overlay)?.overlay;
        const m = o && /neighbours\s+(\d+)/.exec(o);
        return m ? Number(m[1]) : null;
      })(),
      bytesFromPeers: lastStats?.bytesFromPeers ?? null,
      bytesFromSource: lastStats?.bytesFromSource ?? null,
      bytesReceived: received,
      bytesUp: lastStats?.bytesUp ?? null,
      playerStalls: lastStats?.stalls ?? null,
      playerStallMs: lastStats?.stallMs ?? null,
      videoError: win.find((s) => s.video.error)?.video.error ?? null,
      pageErrors: v.viewer.errors.slice(0, 5),
      lastStats,
    };
  }

  /**
   * Writes `<out>/<name>.json` for a viewer: its figures (`{ phase: figures }`) and every raw
   * sample, so a failure can be read without rerunning.
   */
  writeJson(name, figures) {
    const v = this.viewers.get(name);
    fs.writeFileSync(path.join(this.out, `${name}.json`), JSON.stringify({ figures, samples: v.samples }, null, 1));
  }

  /** The last stats() a viewer reported (also for viewers that have left). */
  lastStats(name) {
    const v = this.viewers.get(name);
    return [...v.samples].reverse().find((s) => s.stats)?.stats ?? null;
  }
}

/**
 * Checks one viewer's figures against the bounds of issue 8; returns a list of violations
 * (empty = good) so a test can report every viewer's problems at once.
 */
export function violations(f, { minAdvanceS = 15, maxStallMs = 1000, maxLatencyMs = 3000 } = {}) {
  const bad = [];
  if (!(f.advanceS >= minAdvanceS)) bad.push(`currentTime advanced ${f.advanceS} s < ${minAdvanceS} s`);
  if (f.maxStallMs > maxStallMs) {
    bad.push(`stalled ${f.maxStallMs} ms > ${maxStallMs} ms (longest time with no bytes arriving: ${f.longestNoBytesMs} ms)`);
  }
  if (!(f.framesDecoded > 0)) bad.push(`decoded frames did not increase (${f.framesDecoded})`);
  if (f.latencyMsMax === null) bad.push(`no frame's timecode could be read (${f.timecodeReads})`);
  else if (f.latencyMsMax >= maxLatencyMs) bad.push(`latency ${f.latencyMsMax} ms >= ${maxLatencyMs} ms`);
  if (f.videoError) bad.push(`video error ${f.videoError}`);
  if (f.pageErrors.length) bad.push(`page errors: ${f.pageErrors.join(' | ')}`);
  if (bad.length) bad.push(hostContext(f));
  return bad;
}

/**
 * What the host was doing during a failing window, so a reader can tell a starved box (load far
 * above the cores, the harness's own polling late) from the product misbehaving.
 */
export function hostContext(f) {
  const starved = f.hostLoadMax > 2 * f.cores || f.sampleGapMsMax > 1000;
  return `host: 1-min load up to ${f.hostLoadMax} on ${f.cores} cores, longest gap between this viewer's samples ` +
    `${f.sampleGapMsMax} ms${starved ? ' (the machine was starved of CPU: other work beside the suite?)' : ''}`;
}

/** Issue 8: the stats overlay and stats() both show peers connected. */
export function peersConnected(f) {
  const bad = [];
  if (f.neighboursLast < 1) bad.push(`stats() shows no peers connected (neighbours ${f.neighboursLast})`);
  if (!(f.overlayNeighbours >= 1)) bad.push(`stats overlay shows no peers connected (${f.overlayNeighbours})`);
  return bad;
}

/** One line for the whole run, printed and appended to `out/e2e/summary.txt`. */
export function summaryLine(test, figs, extra = '') {
  figs = figs.map((f) => ({ ...f, playerMinusTimecodeAbs: f.playerMinusTimecodeMs === null ? null : Math.abs(f.playerMinusTimecodeMs) }));
  const n = figs.length;
  const min = (k) => (n ? Math.min(...figs.map((f) => f[k] ?? Infinity)) : 0);
  const max = (k) => (n ? Math.max(...figs.map((f) => f[k] ?? -Infinity)) : 0);
  const sum = (k) => figs.reduce((a, f) => a + (f[k] ?? 0), 0);
  const line = !n
    ? `e2e ${test}: ${extra}`
    : `e2e ${test}: ${n} viewers, start-up max ${max('startupMs')} ms, advance min ${min('advanceS')} s, max stall ${max('maxStallMs')} ms, ` +
    `latency max ${max('latencyMsMax')} ms (player's own figure off by ≤${max('playerMinusTimecodeAbs')} ms), ` +
    `frames min ${min('framesDecoded')}, host load max ${max('hostLoadMax')}, ` +
    `received ${(sum('bytesReceived') / 1e6).toFixed(2)} MB (from peers ${(sum('bytesFromPeers') / 1e6).toFixed(2)} MB)` +
    (extra ? `, ${extra}` : '');
  console.log(line);
  fs.mkdirSync(OUT_ROOT, { recursive: true });
  fs.appendFileSync(path.join(OUT_ROOT, 'summary.txt'), `${new Date().toISOString()} ${line}\n`);
  return line;
}

/** Generates (once, cached under out/e2e/fixtures) a small live-style fMP4 with ffmpeg. */
export function fixtureMp4() {
  const dir = path.join(OUT_ROOT, 'fixtures');
  const file = path.join(dir, 'pattern.mp4');
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(dir, { recursive: true });
  const r = spawnSync(
    'ffmpeg',
    [
      '-hide_banner', '-loglevel', 'error', '-y',
      '-f', 'lavfi', '-i', 'testsrc2=size=320x180:rate=30',
      '-t', '6', '-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency',
      '-pix_fmt', 'yuv420p', '-profile:v', 'baseline', '-g', '15', '-keyint_min', '15',
      '-movflags', 'frag_keyframe+empty_moov+default_base_moof', `${file}.tmp.mp4`,
    ],
    { stdio: ['ignore', 'inherit', 'inherit'], timeout: 60_000 },
  );
  if (r.status !== 0) throw new Error(`ffmpeg failed (${r.status ?? r.error})`);
  fs.renameSync(`${file}.tmp.mp4`, file);
  return file;
}

/**
 * Opens the broadcaster page with the built-in test pattern and waits until it exposes its stream
 * id (`window.swarmcastBroadcaster.streamId`).
 */
export async function openBroadcaster(browser, out, base, extraQuery = '') {
  const b = await openPage(browser, out, 'broadcaster', `${base}/broadcast.html?autostart=pattern${extraQuery}`, {
    viewport: { width: 800, height: 600 },
  });
  const streamId = await waitInPage(
    b.page,
    () => window.swarmcastBroadcaster && window.swarmcastBroadcaster.streamId,
    undefined,
    { timeout: 30_000, what: 'broadcaster page exposing window.swarmcastBroadcaster.streamId' },
  );
  b.streamId = streamId;
  // Every segment the page publishes (metadata only), so a swarm-wide hole can be told apart from
  // a broadcaster that captured nothing for a while (e.g. its main thread starved).
  await b.page.evaluate(() => {
    window.__e2ePublished = [];
    window.swarmcastBroadcaster.subscribe?.((kind, o) => {
      if (kind !== 'segment') return;
      window.__e2ePublished.push({
        seq: o.seq,
        ptsUs: o.ptsUs,
        durationUs: o.durationUs,
        keyframe: o.keyframe,
        bytes: o.data?.length,
        atUs: Math.round((performance.timeOrigin + performance.now()) * 1000),
      });
    });
  });
  b.published = () => b.page.evaluate(() => window.__e2ePublished);
  b.stats = () =>
    b.page.evaluate(() => {
      const s = window.swarmcastBroadcaster.stats();
      return JSON.parse(JSON.stringify(s instanceof Map ? Object.fromEntries(s) : s));
    });
  // Live = encoding and publishing. If it never gets there, say what the page says.
  const deadline = Date.now() + 30_000;
  let st = null;
  while (Date.now() < deadline) {
    st = await b.stats().catch((e) => ({ state: `stats() threw: ${e.message.split('\n')[0]}` }));
    if (st.state === 'live' && st.swarm?.available !== false) break;
    await sleep(250);
  }
  if (!(st?.state === 'live' && st.swarm?.available !== false)) {
    const said = await b.page
      .evaluate(() => ['status', 'notice'].map((id) => document.getElementById(id)?.textContent?.trim()).join(' | '))
      .catch(() => '?');
    throw new Error(
      `broadcaster did not go live with a swarm in 30 s (state ${st?.state}, swarm ${JSON.stringify(st?.swarm)}): page says "${said}"; see ${out}/broadcaster.console.log`,
    );
  }
  b.log(`live: ${JSON.stringify(st)}`);
  return b;
}

/**
 * The set-up most swarm tests share: our signaling server, a browser, the broadcaster page live
 * with the test pattern, a started `Monitor`, and `url(name)` for a viewer page of the stream
 * (`viewerQuery` is appended to its query string).
 */
export async function startBroadcast(name, { viewerQuery = '' } = {}) {
  const out = outDir(name);
  const server = await startSignaling(out);
  const browser = await launchBrowser();
  const source = await openBroadcaster(browser, out, server.url);
  const url = (n) => `${server.url}/watch.html?stream=${encodeURIComponent(source.streamId)}&stats=1${viewerQuery}#${n}`;
  const monitor = new Monitor(out);
  monitor.start();
  return { out, server, browser, source, url, monitor };
}

/** Opens `n` viewer pages (separate contexts) named `${prefix}${i}`, a few at a time. */
export async function openViewers(browser, out, urlFor, names) {
  const viewers = [];
  // Two at a time: ten pages loading wasm at once on two cores only slows every one of them.
  for (let i = 0; i < names.length; i += 2) {
    viewers.push(...(await Promise.all(names.slice(i, i + 2).map((n) => openPage(browser, out, n, urlFor(n))))));
  }
  return viewers;
}

/** What the broadcaster's SwarmPeer uploaded (`stats().swarm.bytesUp` on broadcast.html). */
export function sourceBytesUp(stats) {
  return stats?.swarm?.bytesUp ?? stats?.bytesUp ?? null;
}
