#!/usr/bin/env bash
# bench/reload_storm.sh: a benchmark, not a test. A reload every INTERVAL_MS for
# DURATION_S while the same clients run against corral, nginx and HAProxy, one after
# the other in the same session: CONNS keep-alive HTTP connections each requesting
# every THINK_MS, plus a connect/close loop (bench/storm_client.py). Each server
# reloads its own way: corral SIGHUP (what `corral -s reload` sends, without waiting
# for the answer: a storm does not wait), nginx `-s reload` (SIGHUP), HAProxy in
# master-worker mode (-W) SIGUSR2 to its master. Prints errors by kind and p50/p99
# for each, plus how many old processes were left at the end.
#
# usage: bench/reload_storm.sh [DURATION_S=30] [INTERVAL_MS=100] [CONNS=2000] [THINK_MS=200]
# needs: python3, nginx, haproxy (a peer that is missing is skipped, said so).
# Knobs: NO_BUILD=1, KEEP=1, CARGO_TARGET_DIR (see peer_lib.sh). Ports 12000-12999.
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

DUR=${1:-30}
INTERVAL_MS=${2:-100}
CONNS=${3:-2000}
THINK=${4:-200}
HAPROXY_BIN=${HAPROXY_BIN:-/usr/sbin/haproxy}
CLIENT=$ROOT/bench/storm_client.py
LIMIT=$((DUR + 120))

port_in_range() {
  local p
  for _ in $(seq 200); do
    p=$((12000 + RANDOM % 1000))
    if ! ss -Htln "( sport = :$p )" | grep -q .; then echo "$p"; return 0; fi
  done
  die "no free port in 12000-12999"
}

# storm NAME PORT RELOAD_CMD... : the client for DUR seconds, a reload every INTERVAL_MS
storm() {
  local name=$1 port=$2
  shift 2
  local out=$WORK/$name.json
  timeout $((DUR + 60)) python3 "$CLIENT" 127.0.0.1 "$port" "$CONNS" "$DUR" "$THINK" >"$out" &
  local client=$!
  STARTED+=("$client")
  # Let the connections open before the storm starts.
  sleep 2
  local n=0 t_end=$(($(now_ms) + (DUR - 4) * 1000))
  while (($(now_ms) < t_end)); do
    "$@" >/dev/null 2>&1 || log "$name: reload command failed"
    n=$((n + 1))
    sleep "$(awk -v ms="$INTERVAL_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
  done
  wait "$client" || log "$name: client exited with $?"
  echo "$n" >"$WORK/$name.reloads"
}

report() {
  local name=$1 procs=$2
  local j=$WORK/$name.json
  [[ -s $j ]] || { printf '%-8s %s\n' "$name" "no result"; return; }
  python3 - "$name" "$j" "$(cat "$WORK/$name.reloads")" "$procs" <<'EOF'
import json, sys
name, path, reloads, procs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
r = json.load(open(path))
k = r["by_kind"]
print(f"{name:<8} reloads={reloads:<4} ok={r['requests_ok']:<8} errors={r['errors']:<6} "
      f"(reset {k['reset']}, eof {k['eof']}, timeout {k['timeout']}, connect {k['connect']}, non200 {k['non200']}) "
      f"idle_closed={r['idle_closed_by_server']:<6} p50={r['p50_ms']}ms p99={r['p99_ms']}ms max={r['max_ms']}ms "
      f"processes_after={procs}")
EOF
}

build_corral
command -v python3 >/dev/null || die "needs python3"
log "storm: ${DUR}s, reload every ${INTERVAL_MS}ms, $CONNS keep-alive clients (think ${THINK}ms) + connect/close loop; load $(loadavg)"
RESULTS=()

# ---- corral ----
PORT=$(port_in_range)
corral_start storm "$LIMIT" <<EOF
[master]
workers = 2
drain_timeout = "60s"
[worker]
max_connections = 10000
idle_timeout = "300s"
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$PORT"
service = "http"
backlog = 4096
EOF
storm corral "$PORT" kill -HUP "$C_MASTER"
sleep 3
RESULTS+=("$(report corral "$(corral_workers | wc -l)")")
corral_stop

# ---- nginx ----
if [[ -x $NGINX_BIN ]]; then
  PORT=$(port_in_range)
  nginx_start storm "$LIMIT" <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
events { worker_connections 10000; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    location / { return 200 "hello\n"; }
  }
}
EOF
  storm nginx "$PORT" "$NGINX_BIN" -c "$N_PREFIX/nginx.conf" -p "$N_PREFIX" -e "$N_PREFIX/logs/error.log" -s reload
  sleep 3
  RESULTS+=("$(report nginx "$(nginx_workers | wc -l)")")
  nginx_stop
else
  log "nginx not found at $NGINX_BIN: skipped"
fi

# ---- HAProxy (master-worker; SIGUSR2 = reload) ----
if [[ -x $HAPROXY_BIN ]]; then
  PORT=$(port_in_range)
  H=$WORK/haproxy
  mkdir -p "$H"
  cat >"$H/haproxy.cfg" <<EOF
global
  maxconn 9000
  nbthread 2
  stats socket $H/admin.sock mode 600 level admin expose-fd listeners
defaults
  mode http
  timeout client 300s
  timeout connect 5s
  timeout server 300s
  timeout http-keep-alive 300s
frontend storm
  bind 127.0.0.1:$PORT backlog 4096
  http-request return status 200 content-type text/plain string "hello"
EOF
  "$HAPROXY_BIN" -c -q -f "$H/haproxy.cfg" || die "haproxy rejects $H/haproxy.cfg"
  timeout --signal=TERM --kill-after=10 "$LIMIT" "$HAPROXY_BIN" -W -db -f "$H/haproxy.cfg" \
    >"$H/haproxy.log" 2>&1 &
  HW=$!
  STARTED+=("$HW")
  HMASTER=""
  for _ in $(seq 100); do
    HMASTER=$(cat /proc/"$HW"/task/*/children 2>/dev/null | awk '{ print $1; exit }')
    [[ -n $HMASTER ]] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  [[ -n $HMASTER ]] || die "haproxy did not start"
  log "haproxy: master $HMASTER"
  storm haproxy "$PORT" kill -USR2 "$HMASTER"
  sleep 3
  RESULTS+=("$(report haproxy "$(descendants "$HMASTER" | wc -l)")")
  kill -TERM "$HMASTER" 2>/dev/null || true
  wait "$HW" 2>/dev/null || true
else
  log "haproxy not found at $HAPROXY_BIN: skipped"
fi

echo
echo "== reload storm: ${DUR}s, one reload every ${INTERVAL_MS}ms, $CONNS keep-alive clients every ${THINK}ms + a connect/close loop"
printf '%s\n' "${RESULTS[@]}"
