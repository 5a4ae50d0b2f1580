// The npm package's entry: `createPlayer` for bundlers (Vite, webpack 5, esbuild, Rollup), plus
// the wasm classes a broadcaster page needs (`StreamKey`, `Muxer`, `SwarmPeer`).
//
// The wasm-bindgen glue is imported statically, so the bundler sees
// `new URL('swarmcast_bg.wasm', import.meta.url)` inside it and ships the `.wasm` as an asset of
// the app; the bytes are fetched only when the first player starts (or `init()` is called), from
// the app's own origin. Nothing else is fetched at run time: only the trackers and the peers are
// contacted. Importing this module has no side effects.

import initGlue, * as wasm from './pkg/swarmcast.js';
import { playerFactory } from './player.mjs';

export { Muxer, StreamKey, SwarmPeer } from './pkg/swarmcast.js';

let ready = null;

/**
 * Loads and instantiates the wasm module once; resolves to the glue module. `wasmUrl` (first call
 * only) overrides where the `.wasm` is fetched from, for bundlers that do not copy assets
 * referenced by `new URL(…, import.meta.url)` (esbuild).
 */
export function init(wasmUrl) {
  ready ??= initGlue(wasmUrl === undefined ? undefined : { module_or_path: wasmUrl }).then(() => wasm);
  return ready;
}

/**
 * Creates a player inside `el` (its content is replaced). With no `trackers`, the page origin's
 * `/announce` is used.
 */
export const createPlayer = /* @__PURE__ */ playerFactory({ loadWasm: () => init(), defaultTrackers: () => [] });
