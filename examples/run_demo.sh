#!/usr/bin/env bash
# Starts three demo backends on 127.0.0.1:9001-9003 and tollgate on
# config/tollgate.yaml in front of them. Ctrl-C stops all four.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for i in 1 2 3; do
  "$bin/tollgate-demo-backend" --listen "127.0.0.1:900$i" --name "app-$i" >/dev/null &
  pids+=($!)
done

"$bin/tollgate" -t -c config/tollgate.yaml
cat <<'TEXT'

tollgate is starting on http://127.0.0.1:8080 (metrics on http://127.0.0.1:9091/metrics)
Try:
  curl -i http://127.0.0.1:8080/products/1   # round robin: app-1 (weight 2), app-2, app-3
  curl -i http://127.0.0.1:8080/healthz      # answered by tollgate itself
  curl    http://127.0.0.1:8080/sticky/me    # ip_hash: always the same backend for you
  curl    http://127.0.0.1:8080/calm/x       # least connections
  curl -s http://127.0.0.1:9091/metrics | grep ^tollgate_
Stop a backend (kill the tollgate-demo-backend on :9002) and keep curling: no errors.
Ctrl-C stops everything.

TEXT
"$bin/tollgate" -c config/tollgate.yaml &
pids+=($!)
wait "${pids[-1]}"
