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
// This file is the script-tag entry: it finds the wasm bundle beside itself (`pkg/`) and starts a
// player in every `div[data-swarmcast]`. The player itself is player.mjs (no side effects), which
// the npm package (npm/index.js) shares.

import { playerFactory } from './player.mjs';

const SCRIPT_URL = new URL(import.meta.url);
const PAGE_PARAMS = new URLSearchParams(location.search);
// Test bundle (cargo feature `test-hooks`) only when the page asks for it.
const PKG_DIR = PAGE_PARAMS.get('pkg') === 'pkg-test' ? 'pkg-test' : 'pkg';

let wasmPromise = null;
function loadWasm() {
  wasmPromise ??= (async () => {
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

/** Creates a player inside `el` (its content is replaced). */
export const createPlayer = playerFactory({ loadWasm, defaultTrackers });

window.swarmcastPlayers = window.swarmcastPlayers || [];

function parseJson(text, what) {
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (_) { console.warn(`swarmcast: ${what} is not valid JSON`); return undefined; }
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
