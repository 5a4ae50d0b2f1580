// The swarm: SwarmPeer from the binding, as the stream's source.
//
// The figures are the binding's own `stats()` fields (npm/index.d.ts, `PlayerStats`): the cap
// and the bitrate are what the core paces by, not recomputed here.

import { log, params } from './ui.mjs';

export class SwarmSink {
  constructor(wasm, key, upKbps) {
    this.streamId = key.streamId();
    this.upKbps = upKbps;
    this.peer = null;
    this.error = null;
    this.errors = 0;
    this.published = 0;
    this.upWindow = [];
    try {
      // No `tracker=` parameter: the binding uses `/announce` on the page's own origin.
      this.peer = new wasm.SwarmPeer({ stream: key.streamId(), secret: key.secret(), trackers: params.getAll('tracker'), uploadKbps: upKbps });
      this.peer.start();
    } catch (e) {
      this.setError(e);
    }
  }
  setError(e) {
    const msg = e?.message ?? String(e);
    this.errors++;
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
    this.published += seg.data.byteLength;
    try { this.peer.publishSegment(seg.ptsUs, seg.durationUs, seg.keyframe, seg.data); } catch (e) { this.setError(e); }
  }
  stats() {
    // `available`: a peer exists (its constructor throws, e.g., where there is no WebRTC).
    if (!this.peer) return { available: false, error: this.error };
    let ps = null;
    try { ps = this.peer.stats(); } catch (e) { this.setError(e); }
    // `null` only while the peer is inside one of its own callbacks: keep the last figures.
    ps = ps ?? this.last ?? {};
    this.last = ps;
    const up = ps.bytesUp ?? 0;
    const now = performance.now();
    this.upWindow.push([now, up]);
    this.upWindow = this.upWindow.filter(([t]) => now - t <= 3000);
    const [t0, b0] = this.upWindow[0];
    const uploadKbps = now > t0 ? ((up - b0) * 8) / (now - t0) : null;
    const neighbours = ps.neighbours ?? 0;
    return {
      available: true,
      error: this.error,
      errors: this.errors,
      neighbours,
      // The audience: the others in the swarm as the trackers say, and at least those connected.
      viewers: Math.max(neighbours, ps.swarmPeers ?? 0),
      bytesUp: up,
      bytesPublished: this.published,
      uploadKbps,
      capKbps: ps.uploadCapKbps ?? null,
      bitrateKbps: ps.bitrateKbps ?? null,
      state: ps.state ?? null,
      message: ps.message ?? null,
      trackersOpen: ps.trackersOpen ?? null,
      connections: ps.connections ?? null,
      raw: ps,
    };
  }
  destroy() { try { this.peer?.destroy(); } catch { /* already gone */ } this.peer = null; }
}
