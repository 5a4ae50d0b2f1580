// swarmcast embed: `<script type="module" src="https://HOST/swarmcast.js"></script>` plus
// `<div data-swarmcast="STREAM_ID"></div>` gives a live player fed by the swarm.
//
// Optional attributes on the div: data-trackers="wss://a/announce wss://b/announce",
// data-ice-servers='[{"urls":"stun:stun.example.org"}]' (JSON), data-muted="false",
// data-stats (show the stats overlay), data-latency-ms="1000" (fixes the buffer; by default it
// follows how evenly segments arrive), data-upload-kbps="2000" (most
// this viewer uploads to the swarm; default 8000; 0 = shares nothing).
//
// JS API: `Swarmcast.createPlayer(el, { stream, trackers, iceServers, muted, stats,
// targetLatencyMs, uploadKbps })` returns a player (an EventTarget: `state`, `stats`, `error` events) with
// `.stats()` and `.destroy()`. Every player is also listed in `window.swarmcastPlayers`.
//
// This file is glue only: the swarm, WebRTC, tracker and MSE decisions are in the wasm module.

const SCRIPT_URL = new URL(import.meta.url);
const PAGE_PARAMS = new URLSearchParams(location.search);
// Test bundle (cargo feature `test-hooks`) only when the page asks for it.
const PKG_DIR = PAGE_PARAMS.get('pkg') === 'pkg-test' ? 'pkg-test' : 'pkg';

let wasmPromise = null;
function loadWasm() {
  wasmPromise ??= (async () => {
    if (typeof WebAssembly !== 'object') throw new Error('This browser cannot run WebAssembly, which the player needs.');
    const mod = await import(new URL(`./${PKG_DIR}/swarmcast.js`, SCRIPT_URL).href);
    await mod.default();
    return mod;
  })();
  return wasmPromise;
}

/** The tracker of the host serving this script (an embedding site's page may be elsewhere). */
function defaultTrackers() {
  const scheme = SCRIPT_URL.protocol === 'https:' ? 'wss' : 'ws';
  return [`${scheme}://${SCRIPT_URL.host}/announce`];
}

const STYLE = `
.swarmcast{position:relative;background:#000;color:#fff;font:13px/1.4 system-ui,sans-serif;overflow:hidden}
.swarmcast video{display:block;width:100%;height:100%;max-height:inherit;background:#000}
.swarmcast .sc-msg{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;
  text-align:center;padding:1em;background:rgba(0,0,0,.55);pointer-events:none}
.swarmcast .sc-msg[hidden],.swarmcast .sc-stats[hidden],.swarmcast button[hidden]{display:none}
.swarmcast button{position:absolute;border:0;border-radius:4px;background:rgba(0,0,0,.6);color:#fff;
  padding:.35em .7em;cursor:pointer;font:inherit}
.swarmcast .sc-unmute{left:.6em;bottom:.6em}
.swarmcast .sc-play{left:50%;top:50%;transform:translate(-50%,-50%);font-size:1.4em}
.swarmcast .sc-toggle{right:.6em;top:.6em;opacity:.6}
.swarmcast .sc-stats{position:absolute;left:.6em;top:.6em;margin:0;padding:.4em .6em;border-radius:4px;
  background:rgba(0,0,0,.65);font:12px/1.35 ui-monospace,monospace;white-space:pre;pointer-events:none}
.swarmcast .sc-live{position:absolute;right:.6em;bottom:.6em;background:#c00;border-radius:3px;padding:0 .4em;font-weight:600}
`;

function injectStyle() {
  if (document.getElementById('swarmcast-style')) return;
  const s = document.createElement('style');
  s.id = 'swarmcast-style';
  s.textContent = STYLE;
  document.head.append(s);
}

const fmt = {
  ms: (v) => (v == null ? '–' : `${(v / 1000).toFixed(2)} s`),
  kbps: (v) => (v == null ? '–' : v >= 1000 ? `${(v / 1000).toFixed(2)} Mbit/s` : `${v.toFixed(0)} kbit/s`),
  pct: (v) => `${Math.round((v || 0) * 100)} %`,
};

class Player extends EventTarget {
  constructor(el, opts) {
    super();
    injectStyle();
    this.el = el;
    this.opts = opts;
    this.peer = null;
    this.state = 'loading';
    this.message = 'Loading…';
    this.destroyed = false;

    el.classList.add('swarmcast');
    const video = document.createElement('video');
    video.playsInline = true;
    // The player calls play() itself once enough is buffered; `autoplay` would start earlier.
    video.autoplay = false;
    // Browsers allow autoplay only when muted; start muted unless told otherwise.
    video.muted = opts.muted !== false;
    video.controls = false;
    const msg = document.createElement('div');
    msg.className = 'sc-msg';
    const unmute = document.createElement('button');
    unmute.className = 'sc-unmute';
    unmute.textContent = 'Click to unmute';
    unmute.hidden = !video.muted;
    const toggle = document.createElement('button');
    toggle.className = 'sc-toggle';
    toggle.textContent = 'stats';
    const stats = document.createElement('pre');
    stats.className = 'sc-stats';
    stats.hidden = !opts.stats;
    const live = document.createElement('span');
    live.className = 'sc-live';
    live.textContent = 'LIVE';
    live.hidden = true;
    el.replaceChildren(video, msg, unmute, toggle, stats, live);
    Object.assign(this, { video, msgEl: msg, unmuteEl: unmute, statsEl: stats, liveEl: live });

    unmute.addEventListener('click', () => {
      video.muted = false;
      unmute.hidden = true;
      video.play().catch(() => {});
    });
    // Autoplay refused (unmuted start, strict policy): offer a button rather than a black box.
    const play = document.createElement('button');
    play.className = 'sc-play';
    play.textContent = '▶ Play';
    play.hidden = true;
    play.addEventListener('click', () => video.play().then(() => { play.hidden = true; }, () => {}));
    el.append(play);
    this.playEl = play;
    toggle.addEventListener('click', () => {
      stats.hidden = !stats.hidden;
      this.renderStats();
    });
    // A click anywhere starts playback if the browser refused autoplay.
    video.addEventListener('click', () => {
      if (video.paused) video.play().catch(() => {});
    });
    this.setState('loading', 'Loading…');
    this.ready = this.start();
  }

  async start() {
    let wasm;
    try {
      wasm = await loadWasm();
    } catch (e) {
      return this.fail('load', e.message || 'Cannot load the player.');
    }
    if (this.destroyed) return;
    try {
      const o = this.opts;
      this.peer = new wasm.SwarmPeer({
        stream: o.stream,
        trackers: o.trackers && o.trackers.length ? o.trackers : defaultTrackers(),
        iceServers: o.iceServers || [],
        video: this.video,
        targetLatencyMs: o.targetLatencyMs,
        uploadKbps: o.uploadKbps,
        testCorrupt: !!o.testCorrupt,
        testTrackerLimit: o.testTrackerLimit,
        onEvent: (type, detail) => this.onPeerEvent(type, detail),
      });
      this.peer.start();
    } catch (e) {
      return this.fail('unsupported', e.message || String(e));
    }
    this.timer = setInterval(() => {
      const s = this.stats();
      // The player starts playback itself; still paused with media buffered means autoplay was refused.
      this.playEl.hidden = !(this.video.paused && this.video.readyState >= 2 && !this.video.muted);
      this.renderStats(s);
      this.dispatchEvent(new CustomEvent('stats', { detail: s }));
    }, 1000);
  }

  onPeerEvent(type, detail) {
    if (type === 'state') this.setState(detail.state, detail.message);
    else if (type === 'error') this.fail(detail.code, detail.message);
  }

  setState(state, message) {
    this.state = state;
    this.message = message || '';
    this.msgEl.textContent = this.message;
    this.msgEl.hidden = state === 'playing' || !this.message;
    this.liveEl.hidden = state !== 'playing';
    this.el.dataset.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, message: this.message } }));
  }

  fail(code, message) {
    this.setState('error', message);
    this.dispatchEvent(new CustomEvent('error', { detail: { code, message } }));
  }

  /** Current figures; zeros before the wasm module is loaded. */
  stats() {
    const s = this.peer && !this.destroyed ? this.peer.stats() : null;
    return s || {
      state: this.state, message: this.message, neighbours: 0, bytesFromPeers: 0, bytesFromSource: 0,
      bytesUp: 0, latencyMs: null, bufferMs: null, stalls: 0, stallMs: 0, currentTime: this.video.currentTime,
    };
  }

  renderStats(s = this.stats()) {
    if (this.statsEl.hidden) return;
    this.statsEl.textContent = [
      `state       ${s.state}`,
      `neighbours  ${s.neighbours}`,
      `from peers  ${fmt.pct(s.peerShare)} (${((s.bytesFromPeers || 0) / 1e6).toFixed(1)} MB)`,
      `from source ${((s.bytesFromSource || 0) / 1e6).toFixed(1)} MB`,
      `latency     ${fmt.ms(s.latencyMs)}`,
      `buffer      ${fmt.ms(s.bufferMs)}`,
      `delivery    ${fmt.ms(s.deliveryMs)}`,
      `down / up   ${fmt.kbps(s.downKbps)} / ${fmt.kbps(s.upKbps)}`,
      `stalls      ${s.stalls} (${fmt.ms(s.stallMs)})`,
      ...(s.capacityShort ? ['swarm       short of upload capacity'] : []),
    ].join('\n');
  }

  destroy() {
    if (this.destroyed) return;
    clearInterval(this.timer);
    try { this.peer?.destroy(); } catch (_) { /* already gone */ }
    try { this.peer?.free(); } catch (_) { /* already freed */ }
    this.destroyed = true;
    this.peer = null;
    const list = window.swarmcastPlayers;
    const i = list.indexOf(this);
    if (i >= 0) list.splice(i, 1);
    this.setState('destroyed', '');
    this.el.replaceChildren();
  }
}

window.swarmcastPlayers = window.swarmcastPlayers || [];

function parseJson(text, what) {
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (_) { console.warn(`swarmcast: ${what} is not valid JSON`); return undefined; }
}

/** Creates a player inside `el` (its content is replaced). */
export function createPlayer(el, opts = {}) {
  if (!opts.stream) throw new Error('swarmcast: `stream` is required');
  const p = new Player(el, opts);
  window.swarmcastPlayers.push(p);
  return p;
}

/** Options from a `div[data-swarmcast]`'s attributes. */
function optsFromElement(el) {
  const d = el.dataset;
  return {
    stream: d.swarmcast,
    trackers: d.trackers ? d.trackers.split(/[\s,]+/).filter(Boolean) : undefined,
    iceServers: parseJson(d.iceServers, 'data-ice-servers'),
    muted: d.muted !== 'false',
    stats: d.stats !== undefined && d.stats !== 'false',
    targetLatencyMs: d.latencyMs ? Number(d.latencyMs) : undefined,
    uploadKbps: d.uploadKbps !== undefined && d.uploadKbps !== '' ? Number(d.uploadKbps) : undefined,
  };
}

/** Starts a player in every `div[data-swarmcast]` not yet started. */
export function scan(root = document) {
  for (const el of root.querySelectorAll('div[data-swarmcast]')) {
    if (el.swarmcastPlayer || !el.dataset.swarmcast) continue;
    el.swarmcastPlayer = createPlayer(el, optsFromElement(el));
  }
}

export const Swarmcast = { createPlayer, scan };
window.Swarmcast = Swarmcast;

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', () => scan());
else scan();
