// Page helpers shared by the broadcaster's modules: the URL parameters, the wall clock of the
// timing contract, formatting, and the three places the page talks to the person (log, notice,
// status line).

export const params = new URLSearchParams(location.search);
export const $ = (id) => document.getElementById(id);

/** Capture wall clock in µs since the Unix epoch: every frame's timestamp (the project's contract). */
export const wallUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
export const fmtKbps = (v) => (v == null || !isFinite(v) ? '–' : `${Math.round(v)} kbit/s`);
export const fmtBytes = (b) => (b < 1 << 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / (1 << 20)).toFixed(2)} MiB`);
export const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

const logLines = [];
export function log(msg, level = 'info') {
  const line = `${new Date().toISOString().slice(11, 23)} ${msg}`;
  logLines.push(line);
  if (logLines.length > 200) logLines.shift();
  const el = $('log');
  if (el) { el.textContent = logLines.join('\n'); el.scrollTop = el.scrollHeight; }
  (level === 'error' ? console.error : console.log)('[broadcast]', msg);
}

export function notice(msg, kind = 'warn') {
  const el = $('notice');
  el.textContent = msg;
  el.className = msg ? `show ${kind === 'error' ? 'error' : ''}` : '';
}

export function setStatus(text, cls = '') {
  const el = $('status');
  el.textContent = text;
  el.className = cls;
}
