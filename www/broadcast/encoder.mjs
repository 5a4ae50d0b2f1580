// The broadcast, one per "Go live": a source drawn into the canvas on a worker tick, WebCodecs
// encoders, and the Rust muxer (wasm `Muxer`) that packages their output into fMP4 segments.

import { videoEncoderConfig } from './settings.mjs';
import { $, log, notice, wallUs } from './ui.mjs';


/** A copy of a BufferSource (ArrayBuffer or a view on one), or undefined. */
function bytesOf(src) {
  if (!src) return undefined;
  if (src instanceof ArrayBuffer) return new Uint8Array(src.slice(0));
  if (ArrayBuffer.isView(src)) return new Uint8Array(src.buffer, src.byteOffset, src.byteLength).slice();
  return undefined;
}

// A timer in a worker: main-thread timers in a hidden tab are throttled to once a second, which
// would turn a background broadcaster into a slideshow.
function workerTicker(intervalMs, fn) {
  const src = `let t; onmessage = (e) => { clearInterval(t); if (e.data > 0) t = setInterval(() => postMessage(0), e.data); };`;
  const url = URL.createObjectURL(new Blob([src], { type: 'text/javascript' }));
  const w = new Worker(url);
  URL.revokeObjectURL(url);
  w.onmessage = fn;
  w.postMessage(intervalMs);
  return { stop: () => { w.postMessage(0); w.terminate(); } };
}

export class Broadcast {
  constructor(wasm, key, source, settings, hooks) {
    this.wasm = wasm;
    this.key = key;
    this.source = source;
    this.s = settings;
    this.hooks = hooks;
    this.canvas = $('canvas');
    this.ctx = this.canvas.getContext('2d', { alpha: false });
    this.state = 'starting';
    this.error = null;
    this.frameNo = 0;
    this.framesIn = 0;
    this.framesEncoded = 0;
    this.dropped = 0;
    this.keyframes = 0;
    this.audioPackets = 0;
    this.segments = 0;
    this.keySegments = 0;
    this.bytesPublished = 0;
    this.muxErrors = 0;
    this.lastKeyUs = -Infinity;
    this.inits = 0;
    this.mime = null;
    this.mseOk = null;
    this.lastSegment = null;
    this.fpsWindow = [];
    this.bytesWindow = [];
  }

  async start() {
    const s = this.s;
    this.canvas.width = s.width;
    this.canvas.height = s.height;
    this.source.onEnded = () => this.hooks.onSourceEnded?.(this);
    await this.source.open(s);
    const audioTrack = s.audio ? this.source.audioTrack() : null;
    const withAudio = s.audio && (this.source.kind === 'pattern' || !!audioTrack);
    if (s.audio && !withAudio) log('source has no audio track: broadcasting video only');
    this.withAudio = withAudio;
    this.muxer = new this.wasm.Muxer(s.segMs * 1000, true, withAudio);

    const cfg = videoEncoderConfig(s);
    const sup = await VideoEncoder.isConfigSupported(cfg);
    if (!sup.supported) throw new Error(`this browser cannot encode ${s.codec} at ${s.width}×${s.height}`);
    this.venc = new VideoEncoder({
      output: (chunk, meta) => this.onVideo(chunk, meta),
      error: (e) => this.fail(`video encoder: ${e.message}`),
    });
    this.venc.configure(cfg);

    if (withAudio) await this.startAudio(audioTrack);

    this.startUs = wallUs();
    this.frameUs = 1e6 / s.fps;
    this.ticker = workerTicker(Math.max(4, Math.floor(1000 / s.fps / 2)), () => this.tick());
    this.state = 'live';
  }

  /** One video tick: draw the source, and encode a frame when one is due. Polled at twice the
   *  frame rate so frames stay evenly spaced despite timer jitter. */
  tick() {
    if (this.state !== 'live') return;
    const now = wallUs();
    if (this.source.kind === 'pattern' && this.withAudio) this.patternAudio(now);
    const due = this.startUs + this.frameNo * this.frameUs;
    if (now < due) return;
    // Late by more than a frame (tab throttled, machine busy): skip ahead instead of bursting.
    if (now - due > this.frameUs * 2) this.frameNo = Math.floor((now - this.startUs) / this.frameUs);
    this.frameNo++;
    this.framesIn++;
    const { width: w, height: h } = this.s;
    this.source.draw(this.ctx, w, h, this.frameNo, now);
    if (this.venc.state !== 'configured') return;
    // Backpressure: a queue means the encoder cannot keep up; drop rather than add latency.
    if (this.venc.encodeQueueSize > 2) { this.dropped++; return; }
    const frame = new VideoFrame(this.canvas, { timestamp: now, duration: Math.round(this.frameUs) });
    const keyFrame = now - this.lastKeyUs >= this.s.keyMs * 1000 - this.frameUs / 2;
    if (keyFrame) this.lastKeyUs = now;
    try {
      this.venc.encode(frame, { keyFrame });
    } catch (e) {
      this.fail(`encode: ${e.message}`);
    } finally {
      frame.close();
    }
  }

  async startAudio(track) {
    const s = this.s;
    this.aenc = new AudioEncoder({
      output: (chunk, meta) => this.onAudio(chunk, meta),
      error: (e) => { log(`audio encoder: ${e.message}`, 'error'); this.audioError = e.message; },
    });
    this.audioCfg = null;
    const configure = (sampleRate, channels) => {
      this.audioCfg = { codec: 'opus', sampleRate, numberOfChannels: channels, bitrate: s.audioKbps * 1000 };
      this.aenc.configure(this.audioCfg);
    };
    if (!track) {
      // Test pattern tone: generated PCM, timestamps continuous from the wall clock at start.
      configure(48000, 1);
      this.audioStartUs = wallUs();
      this.audioSamples = 0;
      this.audioOffsetUs = 0;
      return;
    }
    if (typeof MediaStreamTrackProcessor === 'undefined') {
      log('this browser has no MediaStreamTrackProcessor: broadcasting video only', 'error');
      this.withAudio = false;
      return;
    }
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    this.audioReader = reader;
    (async () => {
      for (;;) {
        const { value: data, done } = await reader.read();
        if (done || this.state === 'stopped') { data?.close(); break; }
        if (!this.audioCfg) configure(data.sampleRate, Math.min(2, data.numberOfChannels));
        // Capture timestamps count from an arbitrary origin: move them onto the wall clock once.
        if (this.audioOffsetUs == null) this.audioOffsetUs = wallUs() - data.timestamp;
        if (this.aenc.state === 'configured' && this.aenc.encodeQueueSize < 20) this.aenc.encode(data);
        data.close();
      }
    })().catch((e) => log(`audio capture: ${e.message}`, 'error'));
  }

  patternAudio(now) {
    const SR = 48000, N = 960; // 20 ms
    if (this.aenc.state !== 'configured') return;
    while (this.audioStartUs + ((this.audioSamples + N) * 1e6) / SR <= now) {
      const ts = this.audioStartUs + Math.round((this.audioSamples * 1e6) / SR);
      const pcm = new Float32Array(N);
      for (let i = 0; i < N; i++) {
        const n = this.audioSamples + i;
        const sampleUs = this.audioStartUs + (n * 1e6) / SR;
        const beep = sampleUs % 1e6 < 100000;
        const f = beep ? 880 : 440;
        pcm[i] = (beep ? 0.35 : 0.12) * Math.sin((2 * Math.PI * f * n) / SR);
      }
      this.audioSamples += N;
      const data = new AudioData({ format: 'f32-planar', sampleRate: SR, numberOfFrames: N, numberOfChannels: 1, timestamp: ts, data: pcm });
      this.aenc.encode(data);
      data.close();
    }
  }

  onVideo(chunk, meta) {
    if (this.state === 'stopped') return;
    this.framesEncoded++;
    this.fpsWindow.push(performance.now());
    if (chunk.type === 'key') this.keyframes++;
    try {
      const dc = meta?.decoderConfig;
      if (dc) {
        const desc = bytesOf(dc.description) ?? new Uint8Array();
        this.emit(this.muxer.setVideoConfig(dc.codec, dc.codedWidth || this.s.width, dc.codedHeight || this.s.height, desc));
      }
      const data = new Uint8Array(chunk.byteLength);
      chunk.copyTo(data);
      // Duration 0: the muxer then times each frame up to the next one, so the fMP4 timeline
      // follows the capture clock exactly even when the timer jitters or frames are dropped.
      this.emit(this.muxer.pushVideo(chunk.timestamp, 0, chunk.type === 'key', data));
    } catch (e) {
      this.muxErrors++;
      log(`video packaging: ${e.message ?? e}`, 'error');
    }
  }

  onAudio(chunk, meta) {
    if (this.state === 'stopped') return;
    this.audioPackets++;
    try {
      const dc = meta?.decoderConfig;
      if (dc) {
        const desc = bytesOf(dc.description);
        try {
          this.emit(this.muxer.setAudioConfig(dc.sampleRate, dc.numberOfChannels, desc));
        } catch (e) {
          // An encoder-specific description we cannot read: the defaults are libopus' values.
          log(`audio description not usable (${e.message}); using defaults`);
          this.emit(this.muxer.setAudioConfig(dc.sampleRate, dc.numberOfChannels, undefined));
        }
      }
      const data = new Uint8Array(chunk.byteLength);
      chunk.copyTo(data);
      const ts = chunk.timestamp + (this.audioOffsetUs || 0);
      this.emit(this.muxer.pushAudio(ts, chunk.duration ?? 0, data));
    } catch (e) {
      this.muxErrors++;
      log(`audio packaging: ${e.message ?? e}`, 'error');
    }
  }

  /** Publishes finished segments, then the init segment the muxer made, if any: segments that
   *  come back together with a new init belong to the previous configuration. */
  emit(segments) {
    for (const seg of segments) {
      this.segments++;
      if (seg.keyframe) this.keySegments++;
      this.bytesPublished += seg.data.byteLength;
      this.bytesWindow.push([performance.now(), seg.data.byteLength]);
      this.lastSegment = { seq: seg.seq, ptsUs: seg.ptsUs, durationUs: seg.durationUs, keyframe: seg.keyframe, bytes: seg.data.byteLength, madeAtUs: wallUs() };
      this.hooks.onSegment(seg, this);
    }
    const init = this.muxer.takeInit();
    if (init) {
      this.inits++;
      this.mime = init.mime;
      this.mseOk = typeof MediaSource !== 'undefined' && MediaSource.isTypeSupported(init.mime);
      log(`init segment ${init.data.byteLength} B, ${init.mime}${this.mseOk ? '' : ' (NOT playable by MSE here)'}`);
      if (!this.mseOk) notice(`Viewers' browsers like this one cannot play ${init.mime} (MediaSource.isTypeSupported is false).`, 'error');
      this.hooks.onInit(init, this);
    }
  }

  fail(msg) {
    if (this.state === 'stopped') return;
    this.error = msg;
    log(msg, 'error');
    notice(msg, 'error');
    this.state = 'error';
  }

  stop() {
    if (this.state === 'stopped') return;
    this.state = 'stopped';
    this.ticker?.stop();
    this.audioReader?.cancel().catch(() => {});
    for (const enc of [this.venc, this.aenc]) { try { if (enc && enc.state !== 'closed') enc.close(); } catch { /* closing */ } }
    this.source.close();
  }

  stats() {
    const now = performance.now();
    this.fpsWindow = this.fpsWindow.filter((t) => now - t < 2000);
    this.bytesWindow = this.bytesWindow.filter(([t]) => now - t < 3000);
    const span = Math.min(3000, Math.max(1, now - (this.bytesWindow[0]?.[0] ?? now)));
    const winBytes = this.bytesWindow.reduce((a, [, b]) => a + b, 0);
    return {
      state: this.state,
      error: this.error,
      source: this.source.kind,
      mime: this.mime,
      mseSupported: this.mseOk,
      inits: this.inits,
      settings: { ...this.s },
      encoder: {
        state: this.venc?.state ?? null,
        queue: this.venc?.encodeQueueSize ?? 0,
        fps: this.fpsWindow.length / 2,
        framesIn: this.framesIn,
        framesEncoded: this.framesEncoded,
        dropped: this.dropped,
        keyframes: this.keyframes,
        audio: this.withAudio ? { state: this.aenc?.state ?? null, queue: this.aenc?.encodeQueueSize ?? 0, packets: this.audioPackets, error: this.audioError ?? null } : null,
      },
      segments: this.segments,
      keySegments: this.keySegments,
      muxErrors: this.muxErrors,
      bytesPublished: this.bytesPublished,
      measuredKbps: this.bytesWindow.length > 1 ? (winBytes * 8) / span : null,
      lastSegment: this.lastSegment,
      originUs: this.muxer?.originUs ?? null,
    };
  }
}
