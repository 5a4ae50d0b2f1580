// Local playback check: plays the packaged stream through MSE as a viewer would.

import { log, wallUs } from './ui.mjs';

export class LocalPreview {
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
