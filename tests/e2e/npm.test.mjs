// Issue 23: the npm package as a web developer uses it. `cargo xtask package --example` packs
// out/npm/swarmcast.tgz, installs it into examples/vite with `npm ci` and builds that app (tsc +
// vite build). This test serves the built app (examples/vite/dist) from its own origin, as a site
// embedding the player would, and checks in a real browser that:
// - it plays the broadcaster page's stream: currentTime advances, frames decode, bytes arrive;
//   so does a script-tag viewer (embed.html) beside it, in the same swarm;
// - the page fetched nothing but the app's own files (the .wasm included: the bundler emitted it
//   as an asset) and opened no WebSocket but the tracker's;
// - every key of a live player's stats() is declared in the package's `PlayerStats` (index.d.ts)
//   and vice versa, and likewise for the zeroed stats() of a player without a peer;
// - every state the player went through is one `PlayerState` declares.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  Monitor,
  ROOT,
  cleanup,
  launchBrowser,
  openBroadcaster,
  openPage,
  outDir,
  sleep,
  startSignaling,
  startStaticServer,
  summaryLine,
} from './harness.mjs';

after(cleanup);

const EXAMPLE = path.join(ROOT, 'examples/vite');
const DIST = path.join(EXAMPLE, 'dist');
// The declarations as installed from the tarball (not the repo's npm/ folder): what users get.
const TYPES = path.join(EXAMPLE, 'node_modules/swarmcast/index.d.ts');

const TYPE_OF = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
};

/** Every file under `dir` as a `startStaticServer` map (`/` serves index.html). */
function filesOf(dir) {
  const files = {};
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const url = `/${path.relative(dir, p).split(path.sep).join('/')}`;
        files[url] = { type: TYPE_OF[path.extname(p)] ?? 'application/octet-stream', body: fs.readFileSync(p) };
      }
    }
  };
  walk(dir);
  files['/'] = files['/index.html'];
  return files;
}

/** The declarations without their comments (which may hold `;`, `}` or `name:`). */
function uncommented(dts) {
  return dts.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
}

/** Property names of `export interface NAME { … }` in a .d.ts (one level; comments skipped). */
function interfaceKeys(dts, name) {
  const m = new RegExp(`export interface ${name} \\{([\\s\\S]*?)\\n\\}`).exec(uncommented(dts));
  assert.ok(m, `index.d.ts declares no interface ${name}`);
  const body = m[1];
  return [...body.matchAll(/^\s*(\w+)\??\s*:/gm)].map((x) => x[1]).sort();
}

/** The string literals of `export type NAME = 'a' | 'b' …;`. */
function unionMembers(dts, name) {
  const m = new RegExp(`export type ${name} =([\\s\\S]*?);`).exec(uncommented(dts));
  assert.ok(m, `index.d.ts declares no type ${name}`);
  const body = m[1];
  return [...body.matchAll(/'([^']+)'/g)].map((x) => x[1]);
}

test('npm package: the Vite example plays the broadcaster\'s stream; stats() matches index.d.ts', { timeout: 150_000 }, async () => {
  for (const f of [path.join(DIST, 'index.html'), TYPES]) {
    assert.ok(fs.existsSync(f), `${f} missing: build the example with \`cargo xtask package --example\``);
  }
  const dts = fs.readFileSync(TYPES, 'utf8');
  const declared = interfaceKeys(dts, 'PlayerStats');
  const states = unionMembers(dts, 'PlayerState');
  assert.ok(declared.length >= 20 && declared.includes('bytesFromPeers'), `PlayerStats keys parsed: ${declared}`);
  assert.ok(states.includes('playing'), `PlayerState members parsed: ${states}`);

  const out = outDir('npm');
  const sig = await startSignaling(out);
  const app = await startStaticServer(filesOf(DIST));
  const browser = await launchBrowser();
  const source = await openBroadcaster(browser, out, sig.url);

  // Opened blank first, so every request of the app's page is seen from its first one.
  const v = await openPage(browser, out, 'app', 'about:blank');
  const requests = [];
  const sockets = [];
  v.page.on('request', (r) => requests.push(r.url()));
  v.page.on('websocket', (ws) => sockets.push(ws.url()));
  const url = `${app}/?stream=${encodeURIComponent(source.streamId)}&tracker=${encodeURIComponent(sig.wsUrl)}`;
  v.url = url;
  await v.page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  // Every state the player announces, from the first (the listener sees later ones only, so the
  // sampled stats().state is collected too).
  await v.page.evaluate(() => {
    window.__e2eStates = [];
    const watch = () => {
      const p = window.swarmcastPlayers?.[0];
      if (!p) return setTimeout(watch, 20);
      window.__e2eStates.push(p.state);
      p.addEventListener('state', (e) => window.__e2eStates.push(e.detail.state));
    };
    watch();
  });

  const monitor = new Monitor(out);
  monitor.add(v);
  monitor.start();
  await monitor.waitStarted(['app'], 45_000);
  // Beside it, the script tag as a site pastes it (embed.html: `<script type="module"
  // src=…/swarmcast.js>` + `<div data-swarmcast>`), from the same build: both kinds of player in
  // one swarm.
  const tag = await openPage(browser, out, 'tag', `${sig.url}/embed.html?stream=${encodeURIComponent(source.streamId)}`);
  monitor.add(tag);
  await monitor.waitStarted(['tag'], 45_000);
  const from = Date.now();
  await sleep(8000);
  const to = Date.now();
  const f = monitor.figures('app', from, to);
  const ft = monitor.figures('tag', from, to);
  await monitor.stop();
  monitor.writeJson('app', { window: f });
  monitor.writeJson('tag', { window: ft });
  assert.equal(ft.videoError, null, 'script tag');
  assert.deepEqual(ft.pageErrors, [], 'script tag');
  assert.ok(ft.advanceS >= 5, `script tag: currentTime advanced only ${ft.advanceS} s in ${ft.windowMs} ms`);
  assert.ok(ft.framesDecoded > 30, `script tag: only ${ft.framesDecoded} frames decoded`);
  assert.equal(await tag.page.getAttribute('div[data-swarmcast]', 'data-state'), 'playing');
  await v.page.screenshot({ path: path.join(out, 'app.png') });

  assert.equal(f.videoError, null);
  assert.deepEqual(f.pageErrors, []);
  assert.ok(f.advanceS >= 5, `currentTime advanced only ${f.advanceS} s in ${f.windowMs} ms`);
  assert.ok(f.framesDecoded > 30, `only ${f.framesDecoded} frames decoded in ${f.windowMs} ms`);
  assert.ok(f.bytesReceived > 100_000, `only ${f.bytesReceived} bytes from the swarm`);
  assert.equal(f.lastStats.state, 'playing');
  const status = await v.page.textContent('#status');
  assert.match(status, /^playing · \d+ neighbours/, `the app's own status line (stats events): ${status}`);

  // Nothing fetched from anywhere but the app's origin; the wasm came from there, as an asset.
  const foreign = requests.filter((r) => new URL(r).origin !== app);
  assert.deepEqual(foreign, [], 'requests outside the app origin');
  const wasm = requests.filter((r) => r.endsWith('.wasm'));
  assert.equal(wasm.length, 1, `wasm requests: ${wasm}`);
  assert.match(new URL(wasm[0]).pathname, /^\/assets\/swarmcast_bg-[\w-]+\.wasm$/);
  assert.deepEqual([...new Set(sockets)], [sig.wsUrl], 'WebSockets opened');

  // stats(): a live player's keys, and those of the same player once destroyed (no peer: the
  // zeroed fallback), both exactly PlayerStats.
  const keys = await v.page.evaluate(() => {
    const p = window.swarmcastPlayers[0];
    const live = Object.keys(p.stats()).sort();
    p.destroy();
    return { live, zeroed: Object.keys(p.stats()).sort(), state: p.state };
  });
  assert.deepEqual(keys.live, declared, 'live stats() keys vs PlayerStats in index.d.ts');
  assert.deepEqual(keys.zeroed, declared, 'stats() without a peer vs PlayerStats in index.d.ts');
  assert.equal(keys.state, 'destroyed');
  const seen = await v.page.evaluate(() => window.__e2eStates);
  const sampled = monitor.viewers.get('app').samples.map((s) => s.stats?.state).filter(Boolean);
  const undeclared = [...new Set([...seen, ...sampled])].filter((s) => !states.includes(s));
  assert.deepEqual(undeclared, [], `states not in PlayerState (${states})`);

  summaryLine('npm', [f, ft], `Vite app + script-tag viewer; Vite app from the packed tarball; ${requests.length} requests, all same-origin; stats() keys = PlayerStats (${declared.length})`);
});
