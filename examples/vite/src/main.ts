// The whole integration: one import, one call, typed events.
import { createPlayer, type PlayerStats } from 'swarmcast';

const params = new URLSearchParams(location.search);
const stream = params.get('stream');
const el = document.getElementById('player')!;
const status = document.getElementById('status')!;

if (!stream) {
  status.textContent = 'No stream given: add ?stream=STREAM_ID to the address.';
} else {
  const player = createPlayer(el, {
    stream,
    trackers: params.getAll('tracker'), // empty: this page's origin + /announce
    stats: true,
  });
  player.addEventListener('state', (e) => {
    status.textContent = `${e.detail.state} ${e.detail.message}`;
  });
  player.addEventListener('stats', (e) => {
    const s: PlayerStats = e.detail;
    const share = Math.round(s.peerShare * 100);
    status.textContent = `${s.state} · ${s.neighbours} neighbours · ${share} % from peers · ` +
      `latency ${s.latencyMs === null ? '–' : `${Math.round(s.latencyMs)} ms`}`;
  });
}
