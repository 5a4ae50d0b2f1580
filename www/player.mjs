// swarmcast player: the `<video>` with its overlay around a wasm `SwarmPeer`, as a module with no
// side effects on import (nothing touches `window` or `document` until a player is created), so a
// bundler can import it, tree-shake it, and server-side rendering can load it.
//
// Two entry points build on it with `playerFactory`: the script tag (`swarmcast.js`: finds the wasm
// bundle beside itself, starts a player in every `div[data-swarmcast]`) and the npm package
// (`index.js`: imports the wasm-bindgen glue, so the bundler ships the `.wasm` as an asset).
//
// This file is glue only: the swarm, WebRTC, tracker and MSE decisions are in the wasm module.

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

/** Every player of the page, newest last (tests and tools read it); made on first use. */
function registry() {
  window.swarmcastPlayers = window.swarmcastPlayers || [];
  return window.swarmcastPlayers;
}

class Player extends EventTarget {
  constructor(el, opts, host) {
    super();
    injectStyle();
    this.el = el;
    this.opts = opts;
    this.host = host;
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
      if (typeof WebAssembly !== 'object') throw new Error('This browser cannot run WebAssembly, which the player needs.');
      wasm = await this.host.loadWasm();
    } catch (e) {
      return this.fail('load', e.message || 'Cannot load the player.');
    }
    if (this.destroyed) return;
    try {
      const o = this.opts;
      this.peer = new wasm.SwarmPeer({
        stream: o.stream,
        trackers: o.trackers && o.trackers.length ? o.trackers : this.host.defaultTrackers(),
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

  /**
   * Current figures: the binding's `SwarmPeer.stats()`, or before the wasm module is loaded (and
   * after `destroy()`) the same fields at zero. The e2e test npm.test.mjs checks that both key
   * sets equal the `PlayerStats` declared in the package's index.d.ts.
   */
  stats() {
    const s = this.peer && !this.destroyed ? this.peer.stats() : null;
    return s || {
      state: this.state, message: this.message, role: 'viewer', peerId: '', neighbours: 0,
      bytesFromPeers: 0, bytesFromSource: 0, bytesUp: 0, peerShare: 0, upKbps: 0, downKbps: 0, bitrateKbps: 0, uploadCapKbps: 0,
      segmentsPlayed: 0, segmentsSkipped: 0, forgersCut: 0, capacityShort: false, piecesPulled: 0,
      parentStalls: 0, stripeDepths: [], trackersOpen: 0, swarmPeers: null, connections: 0, connectionsOpen: 0,
      latencyMs: null, bufferMs: null, deliveryMs: null, targetBufferMs: null, appendQueue: 0,
      stalls: 0, stallMs: 0, currentTime: this.video.currentTime, reinits: 0,
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
    const list = registry();
    const i = list.indexOf(this);
    if (i >= 0) list.splice(i, 1);
    this.setState('destroyed', '');
    this.el.replaceChildren();
  }
}

/**
 * `createPlayer(el, opts)` bound to a way of loading the wasm module: `host.loadWasm()` resolves
 * to the initialised wasm-bindgen module (called once per player; cache it), and
 * `host.defaultTrackers()` gives the tracker URLs used when `opts.trackers` is empty.
 */
export function playerFactory(host) {
  /** Creates a player inside `el` (its content is replaced). */
  return function createPlayer(el, opts = {}) {
    if (!opts.stream) throw new Error('swarmcast: `stream` is required');
    const p = new Player(el, opts, host);
    registry().push(p);
    return p;
  };
}
