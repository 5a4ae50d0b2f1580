// The swarm: SwarmPeer from the binding, as the stream's source.

import { log, params } from './ui.mjs';

function trackerUrls() {
  const given = params.getAll('tracker');
  if (given.length) return given;
  return [`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/announce`];
}

const num = (o, ...names) => {
  for (const n of names) {
    const v = o?.[n];
    if (v != null && v !== '') return Number(v);
  }
  return undefined;
};

/** The source's upload cap as the core applies it: a multiple of the stream's bitrate (3 by
 *  default), and never more than the upload the page allows. */
export const SOURCE_CAP_MULTIPLE = 3;

export class SwarmSink {
  constructor(wasm, key, upKbps) {
    this.available = typeof wasm.SwarmPeer === 'function';
    this.streamId = key.streamId();
    this.upKbps = upKbps;
    this.peer = null;
    this.error = null;
    this.bigint = false;
    this.upWindow = [];
    if (!this.available) return;
    try {
      this.peer = new wasm.SwarmPeer({ stream: key.streamId(), secret: key.secret(), trackers: trackerUrls(), uploadKbps: upKbps });
      const started = this.peer.start?.();
      if (started?.catch) started.catch((e) => this.setError(e));
    } catch (e) {
      this.setError(e);
    }
  }
  setError(e) {
    const msg = e?.message ?? String(e);
    this.errors = (this.errors || 0) + 1;
    // Once per distinct message: a failing publish would otherwise log five times a second.
    if (msg !== this.error) log(`swarm: ${msg}`, 'error');
    this.error = msg;
  }
  publishInit(mime, data) {
    if (!this.peer) return;
    try { this.peer.publishInit(mime, data); } catch (e) { this.setError(e); }
  }
  publishSegment(seg) {
    if (!this.peer) return;
    this.published = (this.published || 0) + seg.data.byteLength;
    const call = (big) => big
      ? this.peer.publishSegment(BigInt(seg.ptsUs), seg.durationUs, seg.keyframe, seg.data)
      : this.peer.publishSegment(seg.ptsUs, seg.durationUs, seg.keyframe, seg.data);
    try {
      call(this.bigint);
    } catch (e) {
      // The binding may take u64 as BigInt; learn that once and keep using it.
      if (!this.bigint && e instanceof TypeError) {
        this.bigint = true;
        try { call(true); } catch (e2) { this.setError(e2); }
      } else {
        this.setError(e);
      }
    }
  }
  stats(targetKbps) {
    if (!this.peer) return { available: this.available, error: this.error };
    let ps = {};
    try { ps = this.peer.stats() || {}; } catch (e) { this.setError(e); }
    const up = num(ps, 'bytesUp', 'bytes_up') ?? 0;
    const now = performance.now();
    this.upWindow.push([now, up]);
    this.upWindow = this.upWindow.filter(([t]) => now - t <= 3000);
    const [t0, b0] = this.upWindow[0];
    const uploadKbps = now > t0 ? ((up - b0) * 8) / (now - t0) : null;
    const neighbours = num(ps, 'neighbours', 'neighbors') ?? 0;
    const viewers = num(ps, 'viewers', 'swarmSize', 'swarm_size', 'audience') ?? neighbours;
    const cap = num(ps, 'capKbps', 'uploadCapKbps', 'sourceCapKbps');
    const multiple = num(ps, 'sourceCapMultiple', 'source_cap_multiple') ?? SOURCE_CAP_MULTIPLE;
    const bitrate = num(ps, 'bitrateKbps', 'bitrate_kbps') || targetKbps;
    return {
      available: true,
      error: this.error,
      errors: this.errors || 0,
      neighbours,
      viewers,
      bytesUp: up,
      bytesPublished: this.published || 0,
      uploadKbps,
      capKbps: cap ?? Math.min(multiple * bitrate, this.upKbps),
      capFromPeer: cap != null,
      state: ps.state ?? null,
      message: ps.message ?? null,
      trackersOpen: num(ps, 'trackersOpen'),
      connections: num(ps, 'connections'),
      raw: ps,
    };
  }
  destroy() { try { this.peer?.destroy?.(); } catch { /* already gone */ } this.peer = null; }
}
