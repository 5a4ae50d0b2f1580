// swarmcast broadcaster page: capture -> WebCodecs -> Rust muxer (wasm) -> SwarmPeer (source).
//
// Glue only: capture and the encoders are browser APIs; packaging and keys are Rust (`Muxer`,
// `StreamKey` in www/pkg/swarmcast.js); the swarm is the binding's `SwarmPeer`.
//
// URL parameters (all optional):
//   autostart=pattern|camera|screen   go live at once (pattern works headless with no devices)
//   key=new                           use a fresh key for this page load only (not stored)
//   keyslot=NAME                      keep the key under another name in localStorage
//   w, h, fps, kbps, keyMs, segMs, codec, audio=0|1, audioKbps   encoder settings
//   upKbps                            the most this page uploads (SwarmPeer `uploadKbps`)
//   preview=1                         local MSE playback check of the packaged stream
//   tracker=URL (repeatable)          trackers; default ws(s)://<this host>/announce
//   pkg=pkg-test                      load the test-hooks bundle
//   compact=1                         only the picture, controls and health (demo iframe)
//
// Timestamps (the project's contract): every frame's timestamp is its capture wall clock in µs
// since the Unix epoch, `(performance.timeOrigin + performance.now()) * 1000`.

const params = new URLSearchParams(location.search);
const pkgDir = params.get('pkg') === 'pkg-test' ? 'pkg-test' : 'pkg';
const $ = (id) => document.getElementById(id);

const wallUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const fmtKbps = (v) => (v == null || !isFinite(v) ? '–' : `${Math.round(v)} kbit/s`);
const fmtBytes = (b) => (b < 1 << 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / (1 << 20)).toFixed(2)} MiB`);

/** A copy of a BufferSource (ArrayBuffer or a view on one), or undefined. */
function bytesOf(src) {
  if (!src) return undefined;
  if (src instanceof ArrayBuffer) return new Uint8Array(src.slice(0));
  if (ArrayBuffer.isView(src)) return new Uint8Array(src.buffer, src.byteOffset, src.byteLength).slice();
  return undefined;
}

const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

const logLines = [];
function log(msg, level = 'info') {
  const line = `${new Date().toISOString().slice(11, 23)} ${msg}`;
  logLines.push(line);
  if (logLines.length > 200) logLines.shift();
  const el = $('log');
  if (el) { el.textContent = logLines.join('\n'); el.scrollTop = el.scrollHeight; }
  (level === 'error' ? console.error : console.log)('[broadcast]', msg);
}

function notice(msg, kind = 'warn') {
  const el = $('notice');
  el.textContent = msg;
  el.className = msg ? `show ${kind === 'error' ? 'error' : ''}` : '';
}

function setStatus(text, cls = '') {
  const el = $('status');
  el.textContent = text;
  el.className = cls;
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

const SETTING_IDS = ['width', 'height', 'fps', 'kbps', 'keyMs', 'segMs', 'codec', 'audioKbps', 'upKbps'];
const PARAM_NAMES = { width: 'w', height: 'h' };

function applyUrlSettings() {
  for (const id of SETTING_IDS) {
    const v = params.get(PARAM_NAMES[id] || id);
    if (v != null) $(id).value = v;
  }
  if (params.get('audio') === '0') $('audio').checked = false;
  if (params.get('preview') === '1') $('preview').checked = true;
}

function readSettings() {
  const num = (id, lo, hi) => Math.min(hi, Math.max(lo, Number($(id).value) || lo));
  const even = (v) => v - (v % 2);
  return {
    width: even(num('width', 64, 3840)),
    height: even(num('height', 64, 2160)),
    fps: num('fps', 1, 60),
    videoKbps: num('kbps', 100, 20000),
    keyMs: num('keyMs', 100, 10000),
    segMs: num('segMs', 40, 4000),
    codec: $('codec').value,
    audio: $('audio').checked,
    audioKbps: num('audioKbps', 6, 256),
    upKbps: num('upKbps', 500, 100000),
  };
}

function guessMime(s) {
  return `video/mp4; codecs="${s.codec}${s.audio ? ',opus' : ''}"`;
}

/** Tells the broadcaster whether viewers' browsers (this one, as a stand-in) can play the choice. */
async function checkCompat() {
  const s = readSettings();
  const out = [];
  const mime = guessMime(s);
  const mseOk = typeof MediaSource !== 'undefined' && MediaSource.isTypeSupported(mime);
  out.push(mseOk ? `<span class="ok">✔ plays in MSE here: ${mime}</span>`
    : `<span class="bad">✘ this browser's MediaSource cannot play ${mime}: viewers like it will see nothing</span>`);
  if (typeof VideoEncoder === 'undefined') {
    out.push('<span class="bad">✘ no WebCodecs VideoEncoder in this browser</span>');
  } else {
    try {
      const sup = await VideoEncoder.isConfigSupported(videoEncoderConfig(s));
      if (!sup.supported) out.push(`<span class="bad">✘ this browser cannot encode ${s.codec} at ${s.width}×${s.height}</span>`);
    } catch (e) {
      out.push(`<span class="bad">✘ encoder config rejected: ${esc(e.message)}</span>`);
    }
  }
  // The swarm carries a segment in at most 64 pieces of ~16 KiB (about 1 MiB).
  const segKiB = ((s.videoKbps + (s.audio ? s.audioKbps : 0)) * s.segMs) / 8 / 1024;
  if (segKiB > 800) out.push(`<span class="bad">✘ segments of ~${Math.round(segKiB)} KiB: too big for the swarm (1 MiB at most); shorten the segment or lower the bitrate</span>`);
  $('compat').innerHTML = out.join('<br>');
  return mseOk;
}

function videoEncoderConfig(s) {
  return {
    codec: s.codec,
    width: s.width,
    height: s.height,
    bitrate: s.videoKbps * 1000,
    framerate: s.fps,
    latencyMode: 'realtime',
    bitrateMode: 'constant',
    avc: { format: 'avc' },
  };
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

const keySlot = `swarmcast.broadcaster.secret${params.get('keyslot') ? '.' + params.get('keyslot') : ''}`;
const ephemeralKey = params.get('key') === 'new';

function storageGet(k) { try { return localStorage.getItem(k); } catch { return null; } }
function storageSet(k, v) { try { localStorage.setItem(k, v); return true; } catch { return false; } }

function loadKey(wasm) {
  if (!ephemeralKey) {
    const saved = storageGet(keySlot);
    if (saved) {
      try { return wasm.StreamKey.fromSecret(saved); } catch (e) { log(`stored key unusable (${e.message}); making a new one`, 'error'); }
    }
  }
  const key = wasm.StreamKey.generate();
  if (!ephemeralKey && !storageSet(keySlot, key.secret())) {
    notice('This browser does not let the page store the key: a reload will make a new stream id. Export the key to keep it.');
  }
  return key;
}

// ---------------------------------------------------------------------------------------------
// Sources: each draws into the page canvas once per frame tick and may supply an audio track.
// ---------------------------------------------------------------------------------------------

/** The built-in test pattern: a running wall clock with milliseconds, a frame counter and
 *  motion, plus a generated tone (440 Hz with an 880 Hz beep on each wall-clock second). It
 *  needs no device, so it works headless. */
class PatternSource {
  constructor(streamId) { this.streamId = streamId; this.kind = 'pattern'; }
  async open() {}
  draw(ctx, w, h, frameNo, tUs) {
    const t = tUs / 1e6;
    const g = ctx.createLinearGradient(0, 0, w, h);
    const hue = (t * 20) % 360;
    g.addColorStop(0, `hsl(${hue},55%,22%)`);
    g.addColorStop(1, `hsl(${(hue + 120) % 360},55%,12%)`);
    ctx.fillStyle = g;
    ctx.fillRect(0, 0, w, h);
    // colour bars along the top
    const bars = ['#c0c0c0', '#c0c000', '#00c0c0', '#00c000', '#c000c0', '#c00000', '#0000c0'];
    bars.forEach((c, i) => { ctx.fillStyle = c; ctx.fillRect((i * w) / 7, 0, w / 7 + 1, h * 0.08); });
    // sweeping bar and bouncing ball: motion makes frozen or dropped frames obvious
    const sweep = ((t % 2) / 2) * w;
    ctx.fillStyle = 'rgba(255,255,255,0.15)';
    ctx.fillRect(sweep - w * 0.02, h * 0.08, w * 0.04, h * 0.92);
    const bx = w * (0.5 + 0.4 * Math.sin(t * 2.1));
    const by = h * (0.55 + 0.3 * Math.abs(Math.sin(t * 3.3)));
    ctx.beginPath();
    ctx.arc(bx, by, h * 0.05, 0, Math.PI * 2);
    ctx.fillStyle = '#ffcc00';
    ctx.fill();
    // big wall clock (UTC) with milliseconds: compare with the viewer's clock for latency
    const d = new Date(tUs / 1000);
    const clock = d.toISOString().slice(11, 23);
    ctx.fillStyle = '#fff';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.font = `bold ${Math.round(h * 0.2)}px ui-monospace, monospace`;
    ctx.fillText(clock, w / 2, h * 0.38);
    ctx.font = `${Math.round(h * 0.07)}px ui-monospace, monospace`;
    ctx.fillText(`frame ${String(frameNo).padStart(6, '0')}   UTC`, w / 2, h * 0.58);
    ctx.font = `${Math.round(h * 0.045)}px ui-monospace, monospace`;
    ctx.fillStyle = 'rgba(255,255,255,0.75)';
    ctx.fillText(`swarmcast test pattern · ${this.streamId.slice(0, 12)}…`, w / 2, h * 0.92);
    // second ticker: 10 boxes, one lit per 100 ms
    const tenth = Math.floor((tUs / 100000) % 10);
    for (let i = 0; i < 10; i++) {
      ctx.fillStyle = i === tenth ? '#3ccf7a' : 'rgba(255,255,255,0.2)';
      ctx.fillRect(w * 0.2 + i * w * 0.062, h * 0.7, w * 0.05, h * 0.05);
    }
    // Machine-readable timecode along the bottom edge: the capture time in ms since the Unix
    // epoch as 41 black/white cells, most significant bit first, after a white and a black
    // calibration cell. The e2e tests read it back from the viewers' <video> to measure latency
    // independently of the player's own figure (tests/e2e/harness.mjs, readTimecode).
    const cells = 43;
    const ms = Math.floor(tUs / 1000);
    const ch = Math.max(8, Math.round(h * 0.035));
    for (let i = 0; i < cells; i++) {
      const bit = i === 0 ? 1 : i === 1 ? 0 : Math.floor(ms / 2 ** (cells - 1 - i)) % 2;
      ctx.fillStyle = bit ? '#fff' : '#000';
      ctx.fillRect(Math.floor((i * w) / cells), h - ch, Math.ceil(w / cells), ch);
    }
  }
  audioTrack() { return null; }
  close() {}
}

/** Camera + microphone, screen, or a media file: a <video> element drawn into the canvas. */
class ElementSource {
  constructor(kind, file) { this.kind = kind; this.file = file; this.stream = null; this.video = null; }
  async open(s) {
    const video = document.createElement('video');
    video.playsInline = true;
    video.muted = true;
    if (this.kind === 'camera') {
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: s.width }, height: { ideal: s.height }, frameRate: { ideal: s.fps } },
        audio: s.audio ? { echoCancellation: true, noiseSuppression: true } : false,
      });
      video.srcObject = this.stream;
    } else if (this.kind === 'screen') {
      this.stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: s.fps } }, audio: s.audio });
      video.srcObject = this.stream;
    } else {
      if (!this.file) throw new Error('choose a media file first');
      video.src = URL.createObjectURL(this.file);
      video.loop = true;
      video.muted = false; // captureStream() of a muted element carries silence
      video.volume = 0.0001;
    }
    this.video = video;
    // The person ends screen sharing (or unplugs the camera) from the browser's own controls.
    for (const t of this.stream?.getVideoTracks() ?? []) t.addEventListener('ended', () => this.onEnded?.());
    await video.play();
    if (this.kind === 'file') {
      const cap = video.captureStream ? video.captureStream() : video.mozCaptureStream?.();
      this.stream = cap || null;
    }
  }
  draw(ctx, w, h) {
    const v = this.video;
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, w, h);
    if (!v || !v.videoWidth) return;
    const scale = Math.min(w / v.videoWidth, h / v.videoHeight);
    const dw = v.videoWidth * scale, dh = v.videoHeight * scale;
    ctx.drawImage(v, (w - dw) / 2, (h - dh) / 2, dw, dh);
  }
  audioTrack() { return this.stream?.getAudioTracks()[0] || null; }
  close() {
    this.stream?.getTracks().forEach((t) => t.stop());
    if (this.video) { this.video.pause(); if (this.kind === 'file') URL.revokeObjectURL(this.video.src); }
  }
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

// ---------------------------------------------------------------------------------------------
// Local playback check: plays the packaged stream through MSE as a viewer would.
// ---------------------------------------------------------------------------------------------

class LocalPreview {
  constructor(video) {
    this.video = video;
    this.queue = [];
    this.sb = null;
    this.started = false;
    this.stalls = 0;
    this.appended = 0;
    this.errors = 0;
    this.originUs = null;
    video.addEventListener('waiting', () => { if (this.started) this.stalls++; });
  }
  init(mime, data, originUs) {
    if (this.sb && this.mime === mime) {
      // A new configuration on the same timeline: append its init and carry on.
      this.queue.push(data);
      this.pump();
      return;
    }
    this.reset();
    this.mime = mime;
    this.ms = new MediaSource();
    this.video.src = URL.createObjectURL(this.ms);
    this.ms.addEventListener('sourceopen', () => {
      try {
        this.sb = this.ms.addSourceBuffer(mime);
        this.sb.mode = 'segments';
        this.sb.addEventListener('updateend', () => this.pump());
        this.sb.addEventListener('error', () => { this.errors++; });
        this.pump();
      } catch (e) {
        this.errors++;
        log(`local playback: ${e.message}`, 'error');
      }
    }, { once: true });
    this.queue.push(data);
    this.originUs = originUs;
  }
  reset() {
    this.queue = [];
    this.sb = null;
    this.started = false;
  }
  segment(seg, originUs) {
    if (!this.ms) return;
    if (!this.started) {
      if (!seg.keyframe) return;
      this.started = true;
    }
    this.originUs = originUs;
    this.queue.push(seg.data);
    this.pump();
  }
  pump() {
    const sb = this.sb, v = this.video;
    if (!sb || sb.updating || this.ms.readyState !== 'open') {
      if (v.error && !this.reported) {
        this.reported = true;
        log(`local playback failed: media error ${v.error.code} ${v.error.message}`, 'error');
      }
      return;
    }
    // Keep 20 s behind the playhead; drop the rest.
    if (sb.buffered.length && v.currentTime - sb.buffered.start(0) > 30) {
      sb.remove(0, v.currentTime - 20);
      return;
    }
    const next = this.queue.shift();
    if (next) {
      try { sb.appendBuffer(next); this.appended++; } catch (e) { this.errors++; log(`local playback append: ${e.message}`, 'error'); }
      return;
    }
    if (sb.buffered.length) {
      const end = sb.buffered.end(sb.buffered.length - 1);
      if (v.paused || v.currentTime < sb.buffered.start(0) || end - v.currentTime > 1.5) {
        v.currentTime = Math.max(sb.buffered.start(0), end - 0.3);
      }
      if (v.paused) v.play().catch(() => {});
      // Small speed-ups keep the playhead near the live edge without seeking.
      v.playbackRate = end - v.currentTime > 0.6 ? 1.05 : 1.0;
    }
  }
  stats() {
    const v = this.video;
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
    let buf = null;
    try { buf = this.sb && this.sb.buffered.length ? this.sb.buffered : null; } catch { /* removed after a media error */ }
    const bufferMs = buf ? Math.max(0, (buf.end(buf.length - 1) - v.currentTime) * 1000) : 0;
    const latencyMs = this.originUs != null && this.started && v.currentTime > 0
      ? wallUs() / 1000 - (this.originUs / 1000 + v.currentTime * 1000) : null;
    return {
      playing: !v.paused && v.readyState >= 2,
      currentTime: v.currentTime,
      bufferMs: Math.round(bufferMs),
      latencyMs: latencyMs == null ? null : Math.round(latencyMs),
      decodedFrames: q.totalVideoFrames ?? null,
      droppedFrames: q.droppedVideoFrames ?? null,
      segmentsAppended: this.appended,
      stalls: this.stalls,
      errors: this.errors + (v.error ? 1 : 0),
      mediaError: v.error ? `${v.error.code} ${v.error.message}` : null,
    };
  }
  close() {
    this.reset();
    this.video.removeAttribute('src');
    this.video.load();
    this.ms = null;
  }
}

// ---------------------------------------------------------------------------------------------
// The broadcast: one per "Go live".
// ---------------------------------------------------------------------------------------------

class Broadcast {
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

// ---------------------------------------------------------------------------------------------
// The swarm: SwarmPeer from the binding, as the stream's source.
// ---------------------------------------------------------------------------------------------

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
const SOURCE_CAP_MULTIPLE = 3;

class SwarmSink {
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

// ---------------------------------------------------------------------------------------------
// Page
// ---------------------------------------------------------------------------------------------

async function main() {
  applyUrlSettings();
  if (params.get('compact') === '1') document.body.classList.add('compact');
  let wasm;
  try {
    wasm = await import(`./${pkgDir}/swarmcast.js`);
    await wasm.default();
  } catch (e) {
    setStatus('not built', 'bad');
    notice(`Cannot load the wasm bundle ./${pkgDir}/swarmcast.js (${e.message}). Build it with \`cargo xtask build-wasm\`.`, 'error');
    return;
  }

  let key = loadKey(wasm);
  let broadcast = null;
  let sink = null;
  let preview = null;

  // Listeners of what is published, for tests and tools: fn('init', {mime, data}) and
  // fn('segment', {seq, ptsUs, mediaPtsUs, durationUs, keyframe, data}).
  const listeners = new Set();
  const tell = (kind, obj) => { for (const fn of listeners) { try { fn(kind, obj); } catch (e) { console.error(e); } } };
  const api = {
    get streamId() { return key.streamId(); },
    viewerUrl: () => viewerUrl(),
    stats,
    start: (kind) => goLive(kind),
    stop,
    subscribe: (fn) => { listeners.add(fn); return () => listeners.delete(fn); },
  };
  window.swarmcastBroadcaster = api;

  function viewerUrl() {
    return new URL(`watch.html?stream=${encodeURIComponent(key.streamId())}`, location.href).href;
  }

  function showKey() {
    const id = key.streamId();
    $('streamId').textContent = id;
    const link = viewerUrl();
    $('viewerLink').href = link;
    $('viewerLink').textContent = link;
    const script = new URL('swarmcast.js', location.href).href;
    $('embed').value = `<script type="module" src="${script}"></script>\n<div data-swarmcast="${id}" style="aspect-ratio:16/9;max-width:640px"></div>`;
    $('secretOut').hidden = true;
    $('secretOut').value = '';
  }

  function setKey(newKey) {
    if (broadcast && broadcast.state !== 'stopped') {
      notice('Stop the broadcast before changing the key.');
      return false;
    }
    key = newKey;
    sink?.destroy();
    sink = null;
    if (!ephemeralKey) storageSet(keySlot, key.secret());
    showKey();
    log(`stream key changed: ${key.streamId()}`);
    return true;
  }

  async function goLive(kind) {
    if (broadcast && broadcast.state !== 'stopped') return;
    kind = kind || document.querySelector('input[name=source]:checked').value;
    document.querySelector(`input[name=source][value=${kind}]`).checked = true;
    notice('');
    if (typeof VideoEncoder === 'undefined' || typeof VideoFrame === 'undefined') {
      // A MediaRecorder fallback is not implemented: say so plainly.
      setStatus('unsupported', 'bad');
      notice('This browser has no WebCodecs (VideoEncoder), which the broadcaster needs. Use a current Chromium-based browser, Safari 16.4+ or Firefox 130+.', 'error');
      return;
    }
    if (typeof wasm.Muxer !== 'function') {
      setStatus('not built', 'bad');
      notice('The packager (Muxer) is missing from this wasm build: rebuild with `cargo xtask build-wasm`.', 'error');
      return;
    }
    const settings = readSettings();
    const mseGuess = await checkCompat();
    if (!mseGuess) notice(`Viewers whose browser is like this one cannot play ${guessMime(settings)}; pick another codec.`, 'error');
    let source;
    if (kind === 'pattern') source = new PatternSource(key.streamId());
    else if (kind === 'file') source = new ElementSource('file', $('file').files[0]);
    else source = new ElementSource(kind);
    setStatus('starting…');
    // One swarm peer per key for the page's life: going live again after a stop continues the
    // same stream (segment numbers go on, the new init is a new version) instead of restarting it.
    if (!sink || sink.streamId !== key.streamId() || sink.upKbps !== settings.upKbps) {
      sink?.destroy();
      sink = new SwarmSink(wasm, key, settings.upKbps);
    }
    if (!sink.available) {
      log('SwarmPeer is not in the wasm bundle yet: packaging runs, nothing is sent to viewers');
      notice('The swarm binding (SwarmPeer) is missing from this build: the stream is packaged but not sent. Use the local playback check to see it.');
    }
    if ($('preview').checked) {
      $('previewBox').classList.add('show');
      preview = new LocalPreview($('previewVideo'));
    }
    broadcast = new Broadcast(wasm, key, source, settings, {
      onInit: (init, b) => {
        sink.publishInit(init.mime, init.data);
        tell('init', init);
        preview?.init(init.mime, init.data, b.muxer.originUs);
      },
      onSourceEnded: () => {
        log(`the ${kind} source ended`);
        stop();
      },
      onSegment: (seg, b) => {
        sink.publishSegment(seg);
        tell('segment', seg);
        preview?.segment(seg, b.muxer.originUs);
      },
    });
    $('start').disabled = true;
    $('stop').disabled = false;
    try {
      await broadcast.start();
      log(`live: ${kind}, ${settings.width}×${settings.height}@${settings.fps}, ${settings.videoKbps} kbit/s, keyframe ${settings.keyMs} ms, segment ${settings.segMs} ms`);
    } catch (e) {
      broadcast.fail(`cannot start ${kind}: ${e.message}`);
      broadcast.stop();
      $('start').disabled = false;
      $('stop').disabled = true;
    }
  }

  function stop() {
    if (!broadcast) return;
    try {
      const tail = broadcast.muxer?.flush();
      if (tail) broadcast.emit(tail);
    } catch (e) { log(`flush: ${e.message}`, 'error'); }
    broadcast.stop();
    preview?.close();
    preview = null;
    $('previewBox').classList.remove('show');
    $('start').disabled = false;
    $('stop').disabled = true;
    log('stopped');
  }

  function stats() {
    const b = broadcast ? broadcast.stats() : { state: 'idle' };
    const targetKbps = broadcast ? broadcast.s.videoKbps + (broadcast.withAudio ? broadcast.s.audioKbps : 0) : 0;
    const sw = sink ? sink.stats(targetKbps) : { available: false };
    // The share of the stream's delivery carried by viewers: what the audience received minus
    // what the source sent, over what the audience received (an estimate from the source's side).
    let peerShare = null;
    if (sw.available && sw.viewers > 0 && sw.bytesPublished > 0) {
      const delivered = sw.bytesPublished * sw.viewers;
      peerShare = Math.max(0, Math.min(1, 1 - (sw.bytesUp ?? 0) / delivered));
    }
    return {
      streamId: key.streamId(),
      viewerUrl: viewerUrl(),
      ...b,
      targetKbps,
      swarm: sw,
      viewers: sw.viewers ?? 0,
      neighbours: sw.neighbours ?? 0,
      uploadKbps: sw.uploadKbps ?? null,
      capKbps: sw.capKbps ?? null,
      peerShare,
      preview: preview ? preview.stats() : null,
    };
  }

  function renderHealth() {
    const st = stats();
    const rows = [];
    const cls = (ok) => (ok ? 'ok' : 'bad');
    rows.push(['state', `<span class="${st.state === 'live' ? 'ok' : st.state === 'error' ? 'bad' : ''}">${st.state}</span>${st.source ? ' · ' + st.source : ''}`]);
    // The source sees only the viewers connected to it; the others get the stream from them.
    rows.push(['viewers connected to you', st.viewers > st.neighbours ? `${st.neighbours} (audience ~${st.viewers})` : `${st.neighbours}`]);
    rows.push(['source upload', `${fmtKbps(st.uploadKbps)} of cap ${fmtKbps(st.capKbps)}${st.swarm?.capFromPeer === false && st.capKbps ? ` (min of ${SOURCE_CAP_MULTIPLE}× bitrate, your limit)` : ''}`]);
    rows.push(['stream bitrate (target / measured)', `${fmtKbps(st.targetKbps)} / ${fmtKbps(st.measuredKbps)}`]);
    rows.push(['share carried by peers', st.peerShare == null ? '–' : `${Math.round(st.peerShare * 100)} % (est.)`]);
    if (st.encoder) {
      const e = st.encoder;
      rows.push(['encoder', `${e.state} · queue ${e.queue} · ${e.fps.toFixed(1)} fps · dropped ${e.dropped}`]);
      rows.push(['frames in / encoded / keyframes', `${e.framesIn} / ${e.framesEncoded} / ${e.keyframes}`]);
      if (e.audio) rows.push(['audio encoder', `${e.audio.state} · queue ${e.audio.queue} · ${e.audio.packets} packets${e.audio.error ? ' · ' + esc(e.audio.error) : ''}`]);
      rows.push(['segments (keyframe)', `${st.segments} (${st.keySegments}) · ${fmtBytes(st.bytesPublished)}${st.muxErrors ? ` · <span class="bad">${st.muxErrors} errors</span>` : ''}`]);
      rows.push(['format', st.mime ? `<span class="${cls(st.mseSupported)}">${esc(st.mime)}</span>` : '–']);
    }
    if (!st.swarm?.available) rows.push(['swarm', '<span class="warn">binding missing: not sending</span>']);
    else {
      const sw = st.swarm;
      const trackers = sw.trackersOpen == null ? '' : ` · trackers open ${sw.trackersOpen}`;
      const conns = sw.connections == null ? '' : ` · connections ${sw.connections}`;
      rows.push(['swarm', `${esc(sw.state ?? '–')}${sw.message ? ' · ' + esc(sw.message) : ''}${trackers}${conns}` +
        (sw.error ? `<br><span class="bad">${esc(sw.error)}</span>` : '')]);
    }
    if (st.preview) {
      const p = st.preview;
      rows.push(['local playback', `${p.playing ? '<span class="ok">playing</span>' : 'waiting'} · latency ${p.latencyMs ?? '–'} ms · buffer ${p.bufferMs} ms · frames ${p.decodedFrames ?? '–'} (dropped ${p.droppedFrames ?? '–'}) · stalls ${p.stalls}${p.errors ? ` · <span class="bad">${p.errors} errors ${esc(p.mediaError ?? '')}</span>` : ''}`]);
    }
    $('health').tBodies[0].innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join('');
    const ratio = st.capKbps && st.uploadKbps != null ? st.uploadKbps / st.capKbps : 0;
    const bar = $('capBar');
    bar.style.width = `${Math.min(100, ratio * 100)}%`;
    bar.style.background = ratio > 1 ? 'var(--bad)' : ratio > 0.8 ? 'var(--warn)' : 'var(--ok)';
    if (st.state === 'live') setStatus(`● LIVE · ${st.neighbours} connected`, 'bad');
    else if (st.state === 'error') setStatus('error', 'bad');
    else if (st.state !== 'starting') setStatus(st.state === 'idle' ? 'ready' : st.state);
  }

  // Controls
  showKey();
  $('start').disabled = false;
  $('start').onclick = () => goLive();
  $('stop').onclick = stop;
  for (const r of document.querySelectorAll('input[name=source]')) {
    r.onchange = () => { if (r.value === 'file' && r.checked) $('file').click(); };
  }
  $('file').onchange = () => { const f = $('file').files[0]; if (f) log(`file: ${f.name}`); };
  for (const id of [...SETTING_IDS, 'audio']) $(id).addEventListener('change', () => checkCompat());
  const copy = async (text, what) => {
    try { await navigator.clipboard.writeText(text); log(`${what} copied`); } catch { log(`copy failed; select the text and copy it by hand`); }
  };
  $('copyLink').onclick = () => copy(viewerUrl(), 'viewer link');
  $('copyEmbed').onclick = () => copy($('embed').value, 'embed snippet');
  $('exportKey').onclick = () => {
    const out = $('secretOut');
    out.hidden = false;
    out.value = key.secret();
    out.select();
    copy(key.secret(), 'secret key');
  };
  $('importBtn').onclick = () => {
    const text = $('importKey').value.trim();
    if (!text) return;
    try {
      const k = wasm.StreamKey.fromSecret(text);
      if (setKey(k)) $('importKey').value = '';
    } catch (e) {
      notice(`Not a valid exported key: ${e.message}`, 'error');
    }
  };
  $('newKey').onclick = () => {
    if (!confirm('Make a new stream key? The old stream id (and links to it) stop working unless you exported the key.')) return;
    setKey(wasm.StreamKey.generate());
  };

  await checkCompat();
  setStatus('ready');
  setInterval(renderHealth, 1000);
  renderHealth();

  const auto = params.get('autostart');
  if (auto) {
    if (['pattern', 'camera', 'screen'].includes(auto)) goLive(auto);
    else log(`unknown autostart source ${auto}`, 'error');
  }
  window.addEventListener('pagehide', () => { stop(); sink?.destroy(); sink = null; });
}

main().catch((e) => {
  setStatus('error', 'bad');
  notice(`broadcaster failed: ${e.message}`, 'error');
  console.error(e);
});
