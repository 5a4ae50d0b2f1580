// The health panel and the status line, drawn from the page's `stats()` once a second.

import { $, esc, fmtBytes, fmtKbps, setStatus } from './ui.mjs';

/** Renders `st` (what `window.swarmcastBroadcaster.stats()` returns). */
export function renderHealth(st) {
  const rows = [];
  const cls = (ok) => (ok ? 'ok' : 'bad');
  rows.push(['state', `<span class="${st.state === 'live' ? 'ok' : st.state === 'error' ? 'bad' : ''}">${st.state}</span>${st.source ? ' · ' + st.source : ''}`]);
  // The source sees only the viewers connected to it; the others get the stream from them.
  rows.push(['viewers connected to you', st.viewers > st.neighbours ? `${st.neighbours} (audience ~${st.viewers})` : `${st.neighbours}`]);
  // The cap is the core's: a multiple of the bitrate the signed headers tell, at most your limit.
  rows.push(['source upload', `${fmtKbps(st.uploadKbps)} of cap ${fmtKbps(st.capKbps)}`]);
  rows.push(['stream bitrate (target / packaged / signed)', `${fmtKbps(st.targetKbps)} / ${fmtKbps(st.measuredKbps)} / ${fmtKbps(st.swarm?.bitrateKbps)}`]);
  rows.push(['share carried by peers', st.peerShare == null ? '–' : `${Math.round(st.peerShare * 100)} % (est.)`]);
  if (st.encoder) {
    const e = st.encoder;
    rows.push(['encoder', `${e.state} · queue ${e.queue} · ${e.fps.toFixed(1)} fps · dropped ${e.dropped}`]);
    rows.push(['frames in / encoded / keyframes', `${e.framesIn} / ${e.framesEncoded} / ${e.keyframes}`]);
    if (e.audio) rows.push(['audio encoder', `${e.audio.state} · queue ${e.audio.queue} · ${e.audio.packets} packets${e.audio.error ? ' · ' + esc(e.audio.error) : ''}`]);
    rows.push(['segments (keyframe)', `${st.segments} (${st.keySegments}) · ${fmtBytes(st.bytesPublished)}${st.muxErrors ? ` · <span class="bad">${st.muxErrors} errors</span>` : ''}`]);
    rows.push(['format', st.mime ? `<span class="${cls(st.mseSupported)}">${esc(st.mime)}</span>` : '–']);
  }
  if (!st.swarm?.available) {
    const err = st.swarm?.error;
    rows.push(['swarm', err ? `<span class="bad">not sending: ${esc(err)}</span>` : 'not live yet']);
  }
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
