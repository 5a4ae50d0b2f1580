// Types of the swarmcast npm package (index.js). The wasm classes' method signatures come from the
// declarations wasm-bindgen generates for the build (pkg/swarmcast.d.ts), so they cannot drift
// from the binding; what wasm-bindgen can only call `any` (option objects, stats, segments) is
// declared here, and the real-browser test tests/e2e/npm.test.mjs checks `PlayerStats` against a
// live player's `stats()`, key for key.

import type {
  Muxer as GlueMuxer,
  SwarmPeer as GluePeer,
  InitInput,
} from './pkg/swarmcast.js';

export { StreamKey } from './pkg/swarmcast.js';

/** What a player or peer says it is doing (`stats().state`, the `state` event). */
export type PlayerState =
  /** The wasm module is loading (player only). */
  | 'loading'
  /** Created, not started yet. */
  | 'idle'
  /** Looking for the tracker and the first neighbours. */
  | 'connecting'
  /** No tracker answers; retrying. */
  | 'unreachable'
  /** Connected, but no media arrives (broadcast stopped, or the swarm is short of upload). */
  | 'waiting'
  /** Media arrives; not enough buffered to play yet. */
  | 'buffering'
  /** Playing the stream. */
  | 'playing'
  /** The source peer (broadcaster) is publishing. */
  | 'live'
  /** Stopped for good: see `message` and the `error` event. */
  | 'error'
  /** `destroy()` was called. */
  | 'destroyed';

/**
 * Figures of a player or peer, as `stats()` returns them (plain numbers; `null` where there is
 * nothing to measure yet). Before the wasm module is loaded, a player gives the same fields at zero.
 */
export interface PlayerStats {
  state: PlayerState;
  /** Why it is not playing, in words (empty when all is well). */
  message: string;
  role: 'viewer' | 'source';
  /** This peer's id (hex of its first bytes, for logs). */
  peerId: string;
  /** Peers exchanging data with this one now. */
  neighbours: number;
  bytesFromPeers: number;
  bytesFromSource: number;
  /** Bytes this peer sent to others. */
  bytesUp: number;
  /** bytesFromPeers / (bytesFromPeers + bytesFromSource), 0 before any data. */
  peerShare: number;
  upKbps: number;
  downKbps: number;
  /** The stream's bitrate from the signed segment headers (0 before any segment). */
  bitrateKbps: number;
  /** The most this peer uploads now: the source's cap (a multiple of the bitrate, at most its
   *  `uploadKbps`), a viewer's usable upload. */
  uploadCapKbps: number;
  segmentsPlayed: number;
  segmentsSkipped: number;
  /** Neighbours cut off for sending forged data. */
  forgersCut: number;
  /** The swarm lacks the upload capacity to serve every viewer. */
  capacityShort: boolean;
  /** Diagnosis: pieces pulled from neighbours on a gap. */
  piecesPulled: number;
  /** Diagnosis: times a parent stopped delivering a stripe. */
  parentStalls: number;
  /** Diagnosis: hops from the source per stripe (255: none). */
  stripeDepths: number[];
  trackersOpen: number;
  /** Peers in the swarm besides this one, as the trackers last said (null: no answer yet). */
  swarmPeers: number | null;
  /** WebRTC connections, and how many of them have an open data channel. */
  connections: number;
  connectionsOpen: number;
  /** Glass to glass: broadcaster's capture clock to the picture shown. */
  latencyMs: number | null;
  /** The player's share of the latency, and what it aims for. */
  bufferMs: number | null;
  targetBufferMs: number | null;
  /** How old the newest segment was when it arrived complete and verified. */
  deliveryMs: number | null;
  /** Diagnosis: segments waiting to be appended to the MediaSource. */
  appendQueue: number;
  stalls: number;
  stallMs: number;
  /** The `<video>`'s currentTime, in seconds. */
  currentTime: number;
  /** Times the player started over (a new MediaSource) after a decode error or a new session. */
  reinits: number;
}

/** Options of `createPlayer` (the script tag's `data-*` attributes say the same). */
export interface PlayerOptions {
  /** The stream id (what the broadcaster page shows; 43 characters of URL-safe base64). */
  stream: string;
  /** Tracker WebSocket URLs (`wss://host/announce`); default: the page origin's `/announce`. */
  trackers?: string[];
  /** STUN/TURN servers for viewers behind NAT; none by default (no third party is contacted). */
  iceServers?: RTCIceServer[];
  /** Start muted (default true: browsers autoplay only muted video; a button unmutes). */
  muted?: boolean;
  /** Show the stats overlay (a button toggles it either way). */
  stats?: boolean;
  /** Fixes the player's buffer; by default it follows how evenly segments arrive (0.5–1.5 s). */
  targetLatencyMs?: number;
  /** The most this viewer uploads to the swarm, kbit/s (default 8000; 0 shares nothing). */
  uploadKbps?: number;
}

export interface PlayerStateDetail {
  state: PlayerState;
  message: string;
}

export interface PlayerErrorDetail {
  /** `load` (wasm), `unsupported` (browser lacks WebRTC/MSE), `codec`, `decode`, … */
  code: string;
  message: string;
}

export interface PlayerEventMap {
  /** The state changed. */
  state: CustomEvent<PlayerStateDetail>;
  /** Once a second while running: the current figures. */
  stats: CustomEvent<PlayerStats>;
  /** Stopped for good. */
  error: CustomEvent<PlayerErrorDetail>;
}

/** A live player in an element; also listed in `window.swarmcastPlayers`. */
export interface Player extends EventTarget {
  readonly el: HTMLElement;
  readonly video: HTMLVideoElement;
  readonly state: PlayerState;
  readonly message: string;
  /** Settles once the player has started (or failed to). */
  readonly ready: Promise<void>;
  stats(): PlayerStats;
  /** Leaves the swarm (goodbyes to neighbours and trackers) and empties the element. */
  destroy(): void;
  addEventListener<K extends keyof PlayerEventMap>(
    type: K,
    listener: (this: Player, ev: PlayerEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PlayerEventMap>(
    type: K,
    listener: (this: Player, ev: PlayerEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Creates a player inside `el` (its content is replaced) and starts it. */
export function createPlayer(el: HTMLElement, opts: PlayerOptions): Player;

/**
 * Loads and instantiates the wasm module (once; later calls return the same promise). Players call
 * it themselves; a broadcaster page calls it before using `StreamKey`, `Muxer` or `SwarmPeer`.
 * `wasmUrl`: where the `.wasm` is, for bundlers that do not copy assets referenced by
 * `new URL(…, import.meta.url)` (esbuild).
 */
export function init(wasmUrl?: InitInput | Promise<InitInput>): Promise<unknown>;

// ---- The broadcaster API: the wasm classes, with typed option and result objects.

/** Options of `new SwarmPeer(…)`. */
export interface SwarmPeerOptions {
  /** The stream id; may be left out when `secret` is given. */
  stream?: string;
  /** The stream key's secret (`StreamKey.secret()`): makes this peer the source. */
  secret?: string;
  trackers?: string[];
  iceServers?: RTCIceServer[];
  uploadKbps?: number;
  /** A viewer plays into this element. */
  video?: HTMLVideoElement;
  targetLatencyMs?: number;
  onEvent?: (
    type: 'state' | 'error',
    detail: PlayerStateDetail | PlayerErrorDetail,
  ) => void;
}

/** One peer of one stream: a viewer (given `video`) or, given the stream's `secret`, the source. */
export interface SwarmPeer extends Omit<GluePeer, 'stats'> {
  /** Current figures (`null` only when called from inside one of its own callbacks). */
  stats(): PlayerStats | null;
}
export declare const SwarmPeer: {
  prototype: SwarmPeer;
  new (opts: SwarmPeerOptions): SwarmPeer;
};

/** A media segment the muxer finished: publish it with `SwarmPeer.publishSegment`. */
export interface MuxedSegment {
  seq: number;
  /** Capture wall-clock time of its first frame, µs since the Unix epoch (what is signed). */
  ptsUs: number;
  /** Its time on the fMP4 timeline, µs. */
  mediaPtsUs: number;
  durationUs: number;
  keyframe: boolean;
  data: Uint8Array;
}

/** An init segment: publish it with `SwarmPeer.publishInit(mime, data)`. */
export interface InitSegment {
  mime: string;
  data: Uint8Array;
}

type Segmenting = 'setVideoConfig' | 'setAudioConfig' | 'pushVideo' | 'pushAudio' | 'flush' | 'takeInit';

/** Packages WebCodecs output (H.264 + Opus) into fMP4 init and media segments. */
export interface Muxer extends Omit<GlueMuxer, Segmenting> {
  setVideoConfig(...args: Parameters<GlueMuxer['setVideoConfig']>): MuxedSegment[];
  setAudioConfig(...args: Parameters<GlueMuxer['setAudioConfig']>): MuxedSegment[];
  pushVideo(...args: Parameters<GlueMuxer['pushVideo']>): MuxedSegment[];
  pushAudio(...args: Parameters<GlueMuxer['pushAudio']>): MuxedSegment[];
  flush(...args: Parameters<GlueMuxer['flush']>): MuxedSegment[];
  /** The init segment made since the last call, if any. */
  takeInit(...args: Parameters<GlueMuxer['takeInit']>): InitSegment | undefined;
}
export declare const Muxer: {
  prototype: Muxer;
  new (...args: ConstructorParameters<typeof GlueMuxer>): Muxer;
};
