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
//
// The page is split by role into www/broadcast/*.mjs: ui (helpers), settings, keys, sources,
// encoder (capture -> WebCodecs -> Muxer), preview (local MSE check), swarm (SwarmPeer) and
// health (the health panel). This file wires them to the controls.

import { Broadcast } from './broadcast/encoder.mjs';
import { renderHealth } from './broadcast/health.mjs';
import { loadKey, saveKey } from './broadcast/keys.mjs';
import { LocalPreview } from './broadcast/preview.mjs';
import { SETTING_IDS, applyUrlSettings, checkCompat, guessMime, readSettings } from './broadcast/settings.mjs';
import { ElementSource, PatternSource } from './broadcast/sources.mjs';
import { SwarmSink } from './broadcast/swarm.mjs';
import { $, log, notice, params, setStatus } from './broadcast/ui.mjs';

const pkgDir = params.get('pkg') === 'pkg-test' ? 'pkg-test' : 'pkg';

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

  const maxSegmentBytes = wasm.SwarmPeer.maxSegmentBytes();
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
    saveKey(key);
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
    const settings = readSettings();
    const mseGuess = await checkCompat(maxSegmentBytes);
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
    if (!sink.peer) {
      notice(`Cannot join the swarm (${sink.error}): the stream is packaged but not sent. Use the local playback check to see it.`, 'error');
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
    const sw = sink ? sink.stats() : { available: false };
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

  // Controls
  showKey();
  $('start').disabled = false;
  $('start').onclick = () => goLive();
  $('stop').onclick = stop;
  for (const r of document.querySelectorAll('input[name=source]')) {
    r.onchange = () => { if (r.value === 'file' && r.checked) $('file').click(); };
  }
  $('file').onchange = () => { const f = $('file').files[0]; if (f) log(`file: ${f.name}`); };
  for (const id of [...SETTING_IDS, 'audio']) $(id).addEventListener('change', () => checkCompat(maxSegmentBytes));
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

  await checkCompat(maxSegmentBytes);
  setStatus('ready');
  const health = () => renderHealth(stats());
  setInterval(health, 1000);
  health();

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
