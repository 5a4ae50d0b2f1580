// Sources: each draws into the page canvas once per frame tick and may supply an audio track.

/** The built-in test pattern: a running wall clock with milliseconds, a frame counter and
 *  motion, plus a generated tone (440 Hz with an 880 Hz beep on each wall-clock second). It
 *  needs no device, so it works headless. */
export class PatternSource {
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
export class ElementSource {
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
