// Encoder settings: the form, its URL parameters, and whether this browser (a stand-in for the
// viewers') can encode and play the choice.

import { $, esc, params } from './ui.mjs';

export const SETTING_IDS = ['width', 'height', 'fps', 'kbps', 'keyMs', 'segMs', 'codec', 'audioKbps', 'upKbps'];
const PARAM_NAMES = { width: 'w', height: 'h' };

export function applyUrlSettings() {
  for (const id of SETTING_IDS) {
    const v = params.get(PARAM_NAMES[id] || id);
    if (v != null) $(id).value = v;
  }
  if (params.get('audio') === '0') $('audio').checked = false;
  if (params.get('preview') === '1') $('preview').checked = true;
}

export function readSettings() {
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

export function guessMime(s) {
  return `video/mp4; codecs="${s.codec}${s.audio ? ',opus' : ''}"`;
}

/** Tells the broadcaster whether viewers' browsers (this one, as a stand-in) can play the choice. */
export async function checkCompat(maxSegmentBytes) {
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
  // The binding's limit (`SwarmPeer.maxSegmentBytes()`), with a fifth of it spare: keyframe
  // segments run well over the average size.
  const segBytes = ((s.videoKbps + (s.audio ? s.audioKbps : 0)) * s.segMs) / 8;
  if (segBytes > 0.8 * maxSegmentBytes) {
    out.push(`<span class="bad">✘ segments of ~${Math.round(segBytes / 1024)} KiB: too big for the swarm (${Math.floor(maxSegmentBytes / 1024)} KiB at most); shorten the segment or lower the bitrate</span>`);
  }
  $('compat').innerHTML = out.join('<br>');
  return mseOk;
}

export function videoEncoderConfig(s) {
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
