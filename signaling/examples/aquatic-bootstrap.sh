#!/usr/bin/env bash
# Issue 24 item 8: the tracker tier is swappable. Runs the interop scenario of
# signaling/tests/interop/client.mjs (two unmodified npm bittorrent-tracker clients: announce,
# offer relayed, answer routed back to the very connection that offered, scrape counts,
# `stopped` leaves the swarm) against aquatic_ws instead of our server, on two sockets:
# aquatic_ws closes a connection that uses two peer ids for one torrent ("Peer used more than
# one PeerId for a single torrent"), which client.mjs's shared-socket variant does and our
# browser peer never does (one peer id per stream, one socket per tracker). Then many.mjs: 100
# torrents on one socket with one peer id. Needs `cargo install --root /tmp/sig-aquatic aquatic_ws` and node with
# `npm ci --ignore-scripts` done in signaling/tests/interop. Usage: aquatic-bootstrap.sh
# Env: AQUATIC (install root, default /tmp/sig-aquatic), PORT (default 3300).
set -euo pipefail
AQUATIC=${AQUATIC:-/tmp/sig-aquatic}
PORT=${PORT:-3300}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/aquatic_ws.toml" <<TOML
socket_workers = 1
swarm_workers = 1
log_level = "warn"

[network]
address = "127.0.0.1:$PORT"
enable_tls = false
TOML
"$AQUATIC/bin/aquatic_ws" -c "$work/aquatic_ws.toml" > "$work/aquatic.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
cd "$here/../tests/interop"
echo "== client.mjs, two sockets"
node client.mjs "ws://127.0.0.1:$PORT" "ws://127.0.0.1:$PORT/x" 2>/dev/null
echo "== many.mjs: 100 torrents on one socket"
node many.mjs "ws://127.0.0.1:$PORT" 100 15000 2>/dev/null
