#!/usr/bin/env bash
# Runs aquatic_ws_load_test against aquatic_ws and then against swarmcast-signaling (native TLS),
# same config, back to back, and prints for each: the tester's summary, the server's CPU
# seconds over the run and its peak RSS (sampled every 0.5 s). BENCHMARKS.md, "Signaling over
# TLS". Needs `cargo install --root /tmp/aquatic aquatic_ws_load_test aquatic_ws` and
# `cargo build --release -p swarmcast-signaling`. Usage: aquatic-compare.sh [targets...]
# with targets among `aquatic` and `ours` (default both). All of the tester's connections
# come from 127.0.0.1, so ours runs with the per-address budget out of the way
# (--max-peers-per-address). Env: AQUATIC (install root),
# SIG (our binary), SIG_ARGS (extra flags for ours), SEND_QUEUE (our --send-queue, default
# 16 like aquatic_ws's channels), CONFIG (tester config, port 3100),
# RAMP (seconds, e.g. 1): hold the server stopped (SIGSTOP) for that long after the tester
# starts, and measure only once all its connections are up. The tester opens one connection
# per `connection_creation_interval_ms` from a timer that its busy connections starve, so
# without this it holds 1,000 connections against one server and 60 against another
# (BENCHMARKS.md); stopped, the server answers nobody, the tester queues ~1,000 attempts in
# that second, and both servers then face the same ~1,000 connections.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
AQUATIC="${AQUATIC:-/tmp/aquatic}"
SIG="$(realpath "${SIG:-$root/target/release/swarmcast-signaling}")"
CONFIG="$(realpath "${CONFIG:-$root/signaling/examples/aquatic_ws_load_test_30s.toml}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem \
  -out cert.pem -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null

cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

measure() { # name pid config
  local name=$1 pid=$2 cfg=$3 peak=0 c0 c1
  sleep 1
  c0=$(cpu "$pid")
  if [[ -n "${RAMP:-}" ]]; then
    sed -i 's/^measure_after_max_connections_reached = .*/measure_after_max_connections_reached = true/' "$cfg"
    kill -STOP "$pid"
  fi
  "$AQUATIC/bin/aquatic_ws_load_test" -c "$cfg" > tester.out 2>&1 &
  local tester=$!
  if [[ -n "${RAMP:-}" ]]; then
    sleep "$RAMP"
    kill -CONT "$pid"
  fi
  local tcpu=0
  while kill -0 "$tester" 2>/dev/null; do
    tcpu=$(cpu "$tester" 2>/dev/null || echo "$tcpu")
    local r; r=$(rss_kib "$pid" || echo 0)
    (( r > peak )) && peak=$r
    sleep 0.5
  done
  wait "$tester" || true
  c1=$(cpu "$pid")
  echo "== $name: load $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -aiE "responses|connections|offer|answer|announce" tester.out | tail -12
  echo "$name: server CPU $(echo "$c1 - $c0" | bc) s, peak RSS $((peak / 1024)) MiB, tester CPU $tcpu s"
}

for t in "${@:-aquatic ours}"; do
  for target in $t; do
    case $target in
      aquatic)
        sed "s#cert.pem#$work/cert.pem#; s#key.pem#$work/key.pem#" \
          "$root/signaling/examples/aquatic_ws.toml" > aquatic.toml
        "$AQUATIC/bin/aquatic_ws" -c aquatic.toml > aquatic.log 2>&1 &
        pid=$!
        sed s/3100/3200/ "$CONFIG" > lt.toml
        measure aquatic_ws "$pid" lt.toml
        kill "$pid"; wait "$pid" 2>/dev/null || true
        ;;
      ours)
        # shellcheck disable=SC2086
        "$SIG" --listen 127.0.0.1:3100 --tls-cert cert.pem --tls-key key.pem --rate 0 \
          --max-swarms-per-connection 100000 --max-peers-per-address 100000000 \
          --send-queue ${SEND_QUEUE:-16} --on-full-queue drop \
          ${SIG_ARGS:-} > sig.log 2>&1 &
        pid=$!
        cp "$CONFIG" lt.toml
        measure swarmcast-signaling "$pid" lt.toml
        curl -sk https://127.0.0.1:3100/metrics | grep -E "^swarmcast_signaling_(rejected_total|relay_latency_seconds_(bucket|count)|messages_out_total)" | grep -v " 0$" || true
        kill "$pid"; wait "$pid" 2>/dev/null || true
        ;;
    esac
  done
done
