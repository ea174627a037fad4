#!/usr/bin/env bash
# Starts an example topology with its demo backends; Ctrl-C stops everything.
#   run_demo.sh           config/tollgate.yaml: three app backends on :9001-9003 and
#                         a slow one (40 ms) on :9004
#   run_demo.sh gateway   config/gateway.yaml: the tutorial's auth service on :7000 and
#                         product service on :9001-9002 (Flask, from target/python)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TOLLGATE_BIN_DIR:-target/release}   # the tests run it on their debug build
example=${1:-tollgate}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

backend() { # listen-address name [flags...]
  "$bin/examples/tollgate-demo-backend" --listen "$1" --name "$2" "${@:3}" >/dev/null &
  pids+=($!)
}

case "$example" in
  tollgate)
    for i in 1 2 3; do backend "127.0.0.1:900$i" "app-$i"; done
    backend 127.0.0.1:9004 app-slow --delay 40
    try='  curl -i http://127.0.0.1:8080/products/1   # round robin: app-1 (weight 2), app-2, app-3
  curl -i http://127.0.0.1:8080/healthz      # answered by tollgate itself
  curl    http://127.0.0.1:8080/sticky/me    # ip_hash: always the same backend for you
  curl    http://127.0.0.1:8080/calm/x       # least connections
  curl    http://127.0.0.1:8080/fast/x       # least_time: app-1 or app-2, hardly ever app-slow
Stop a backend (kill the tollgate-demo-backend on :9002) and keep curling: no errors.'
    ;;
  gateway)
    python=target/python/bin/python3
    script() { # name script [flags...]
      "$python" "examples/gateway/$2" --name "$1" "${@:3}" >/dev/null &
      pids+=($!)
    }
    script auth auth_service.py --listen 127.0.0.1:7000
    for i in 1 2; do
      script "product-$i" product_service.py --listen "127.0.0.1:900$i" --auth http://127.0.0.1:7000
    done
    try='  TOKEN=$(curl -s -u admin:admin-password -X POST http://127.0.0.1:8080/public/auth/login \
      | sed '"'"'s/.*"token": *"\([^"]*\)".*/\1/'"'"')
  curl http://127.0.0.1:8080/public/product/all                                      # public
  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/protected/product/1/  # admin: 200
  curl -i http://127.0.0.1:8080/protected/product/1/                                 # 401 {"message": "Unauthorized"}
  curl -i -X OPTIONS -H "Origin: http://localhost:3000" -H "Access-Control-Request-Method: GET" \
      -H "Access-Control-Request-Headers: authorization" http://127.0.0.1:8080/protected/product/1/   # CORS preflight: 204
  (log in as gues / gues-password for a 403 from the product service)'
    ;;
  *)
    echo "usage: $0 [tollgate|gateway]" >&2
    exit 2
    ;;
esac

config="config/$example.yaml"
"$bin/tollgate" -t -c "$config"
status_page=""
if grep -q '^  admin: 127.0.0.1:9092' "$config"; then
  status_page='
Status page (live upstreams and backends): http://127.0.0.1:9092/
  target/release/tollgate -c '"$config"' status   # the same, in the terminal'
fi
printf '\ntollgate is starting on http://127.0.0.1:8080 (metrics on http://127.0.0.1:9091/metrics)\n%s\nTry:\n%s\n  curl -s http://127.0.0.1:9091/metrics | grep ^tollgate_\nCtrl-C stops everything.\n\n' "$status_page" "$try"
"$bin/tollgate" -c "$config" &
pids+=($!)
wait "${pids[-1]}"
