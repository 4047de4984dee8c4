#!/usr/bin/env bash
# bench/tls_reload_storm.sh: a benchmark, not a test (issue 24). The reload storm of
# bench/reload_storm.sh over HTTPS: corral, nginx and HAProxy each terminate TLS with
# the same ECDSA P-256 certificate (made here with openssl, in the run's directory)
# while each reloads itself every INTERVAL_MS, and the same clients
# (bench/tls_storm_client.py: CONNS keep-alive HTTPS connections, TLS 1.3, each
# requesting every THINK_MS, plus a connect/close loop) run against each in turn, RUNS
# rounds alternating corral, nginx, HAProxy. Each server reloads its own way: corral
# `corral -s reload` (which returns once the new generation serves, so the loop waits
# for it; CORRAL_RELOAD=hup sends SIGHUP without waiting instead), nginx `nginx -s
# reload` (SIGHUP), HAProxy in master-worker mode (-W) SIGUSR2 to its master.
#
# Prints per server and run: reloads, requests ok, failed requests by kind, the new TLS
# handshakes the reloads forced (keep-alive clients that had to reconnect: a client
# whose connection survives never handshakes again), keep-alive connections the server
# closed between requests (and how many of those closes followed a response that said
# `Connection: close`, and how each close looked: close_notify, an EOF without it, a
# reset), p50/p99/max, processes left; then the medians over the runs side by side with
# corral / peer ratios.
#
# usage: bench/tls_reload_storm.sh [DURATION_S=15] [INTERVAL_MS=100] [CONNS=500] [THINK_MS=200]
# needs: python3, openssl, nginx, haproxy (a peer that is missing is skipped, said so).
# Knobs: RUNS=3, SERVERS="corral nginx haproxy", CORRAL_RELOAD=cli|hup, NO_BUILD=1,
# KEEP=1, CARGO_TARGET_DIR, BENCH_DIR (see peer_lib.sh). Ports 13000-13999.
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

DUR=${1:-15}
INTERVAL_MS=${2:-100}
CONNS=${3:-500}
THINK=${4:-200}
RUNS=${RUNS:-3}
SERVERS=${SERVERS:-corral nginx haproxy}
CORRAL_RELOAD=${CORRAL_RELOAD:-cli}
HAPROXY_BIN=${HAPROXY_BIN:-/usr/sbin/haproxy}
CLIENT=$ROOT/bench/tls_storm_client.py
LIMIT=$((DUR + 120))
((DUR >= 8)) || die "DURATION_S must be at least 8 (2 s to connect, 2 s quiet at the end)"

port_in_range() {
  local p
  for _ in $(seq 200); do
    p=$((13000 + RANDOM % 1000))
    if ! ss -Htln "( sport = :$p )" | grep -q .; then echo "$p"; return 0; fi
  done
  die "no free port in 13000-13999"
}

# ---- the certificate: ECDSA P-256, self-signed for localhost, shared by all three ----
TLS=$WORK/tls
mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$TLS/key.pem" -out "$TLS/cert.pem" 2>"$TLS/openssl.log" || die "openssl req failed"
cat "$TLS/cert.pem" "$TLS/key.pem" >"$TLS/haproxy.pem" # HAProxy wants both in one file
chmod 600 "$TLS/key.pem" "$TLS/haproxy.pem"

# storm NAME PORT RELOAD_CMD... : the client for DUR seconds, a reload every INTERVAL_MS
# from 2 s in until 2 s before the end (so the last reload's effects are measured).
storm() {
  local name=$1 port=$2
  shift 2
  local out=$WORK/$name.json
  timeout $((DUR + 60)) python3 "$CLIENT" 127.0.0.1 "$port" "$CONNS" "$DUR" "$THINK" \
    "$TLS/cert.pem" >"$out" &
  local client=$!
  STARTED+=("$client")
  sleep 2 # let the connections open (and handshake) before the storm starts
  local n=0 failed=0 t_end=$(($(now_ms) + (DUR - 4) * 1000))
  local pause
  pause=$(awk -v ms="$INTERVAL_MS" 'BEGIN { printf "%.3f", ms / 1000 }')
  local t0
  t0=$(now_ms)
  while (($(now_ms) < t_end)); do
    if ! "$@" >>"$WORK/$name.reload.log" 2>&1; then
      failed=$((failed + 1))
    fi
    n=$((n + 1))
    sleep "$pause"
  done
  local span=$(($(now_ms) - t0))
  wait "$client" || log "$name: client exited with $?"
  echo "$n $failed $span" >"$WORK/$name.reloads"
}

# ---- one server each -----------------------------------------------------------------
run_corral() {
  local tag=$1 port
  port=$(port_in_range)
  corral_start "$tag" "$LIMIT" <<EOF
[master]
workers = 2
drain_timeout = "60s"
[worker]
max_connections = 10000
idle_timeout = "300s"
[log]
level = "info"
[[listen]]
address = "127.0.0.1:$port"
service = "http"
backlog = 4096
[listen.tls]
cert = "$TLS/cert.pem"
key = "$TLS/key.pem"
min_version = "1.3"
EOF
  if [[ $CORRAL_RELOAD == hup ]]; then
    storm "$tag" "$port" kill -HUP "$C_MASTER"
  else
    storm "$tag" "$port" timeout 60 "$CORRAL" -s reload --no-wait -c "$C_CONF"
  fi
  sleep 3
  timeout 10 "$CORRAL" status --json -c "$C_CONF" >"$WORK/$tag.status.json" 2>/dev/null || true
  corral_workers | wc -l >"$WORK/$tag.procs"
  corral_log_problems "$tag" >"$WORK/$tag.warn"
  cp "$WORK/corral-$tag/corral.log" "$WORK/$tag.server.log"
  corral_stop
}

run_nginx() {
  local tag=$1 port
  port=$(port_in_range)
  nginx_start "$tag" "$LIMIT" <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
events { worker_connections 10000; }
http {
  access_log off;
  client_body_temp_path @PREFIX@/tmp/body;
  proxy_temp_path @PREFIX@/tmp/proxy;
  fastcgi_temp_path @PREFIX@/tmp/fastcgi;
  uwsgi_temp_path @PREFIX@/tmp/uwsgi;
  scgi_temp_path @PREFIX@/tmp/scgi;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port ssl backlog=4096;
    ssl_certificate $TLS/cert.pem;
    ssl_certificate_key $TLS/key.pem;
    ssl_protocols TLSv1.3;
    location / { return 200 "hello\n"; }
  }
}
EOF
  storm "$tag" "$port" "$NGINX_BIN" -c "$N_PREFIX/nginx.conf" -p "$N_PREFIX" \
    -e "$N_PREFIX/logs/error.log" -s reload
  sleep 3
  nginx_workers | wc -l >"$WORK/$tag.procs"
  echo 0 >"$WORK/$tag.warn"
  cp "$N_PREFIX/logs/error.log" "$WORK/$tag.server.log" 2>/dev/null || true
  nginx_stop
}

run_haproxy() {
  local tag=$1 port H
  port=$(port_in_range)
  H=$WORK/haproxy-$tag
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
  bind 127.0.0.1:$port ssl crt $TLS/haproxy.pem ssl-min-ver TLSv1.3 backlog 4096
  http-request return status 200 content-type text/plain string "hello"
EOF
  "$HAPROXY_BIN" -c -q -f "$H/haproxy.cfg" || die "haproxy rejects $H/haproxy.cfg"
  timeout --signal=TERM --kill-after=10 "$LIMIT" "$HAPROXY_BIN" -W -db -f "$H/haproxy.cfg" \
    >"$H/haproxy.log" 2>&1 &
  local hw=$! hmaster=""
  STARTED+=("$hw")
  for _ in $(seq 100); do
    hmaster=$(cat /proc/"$hw"/task/*/children 2>/dev/null | awk '{ print $1; exit }')
    [[ -n $hmaster ]] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  [[ -n $hmaster ]] || die "haproxy did not start"
  log "haproxy $tag: master $hmaster"
  storm "$tag" "$port" kill -USR2 "$hmaster"
  sleep 3
  descendants "$hmaster" | wc -l >"$WORK/$tag.procs"
  echo 0 >"$WORK/$tag.warn"
  kill -TERM "$hmaster" 2>/dev/null || true
  wait "$hw" 2>/dev/null || true
}

build_corral
command -v python3 >/dev/null || die "needs python3"
AVAIL=()
for s in $SERVERS; do
  case $s in
  corral) AVAIL+=(corral) ;;
  nginx) if [[ -x $NGINX_BIN ]]; then AVAIL+=(nginx); else log "nginx not found at $NGINX_BIN: skipped"; fi ;;
  haproxy) if [[ -x $HAPROXY_BIN ]]; then AVAIL+=(haproxy); else log "haproxy not found at $HAPROXY_BIN: skipped"; fi ;;
  *) die "unknown server $s" ;;
  esac
done
LOAD0=$(loadavg)
log "TLS storm: ${DUR}s, reload every ${INTERVAL_MS}ms, $CONNS keep-alive HTTPS clients (think ${THINK}ms) + connect/close loop, $RUNS runs of ${AVAIL[*]}; load $LOAD0"
TAGS=()
for r in $(seq "$RUNS"); do
  for s in "${AVAIL[@]}"; do
    log "run $r: $s (load $(loadavg))"
    "run_$s" "$s-$r"
    TAGS+=("$s-$r")
  done
done

echo
echo "== TLS reload storm: ${DUR}s, a reload every ${INTERVAL_MS}ms ($CORRAL_RELOAD for corral), $CONNS keep-alive HTTPS clients every ${THINK}ms + a connect/close loop, $RUNS runs; ECDSA P-256, TLS 1.3, no resumption; load before $LOAD0, after $(loadavg)"
python3 - "$WORK" "$CONNS" "${TAGS[@]}" <<'EOF'
import json, os, statistics, sys
work, conns, tags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def rd(tag, ext):
    try:
        return open(os.path.join(work, f"{tag}.{ext}")).read().strip()
    except OSError:
        return ""
rows = {}
for tag in tags:
    name = tag.rsplit("-", 1)[0]
    try:
        r = json.load(open(os.path.join(work, f"{tag}.json")))
    except (OSError, ValueError):
        print(f"{tag:<10} no result")
        continue
    n, rfail, span = (rd(tag, "reloads") or "0 0 0").split()
    k = r["by_kind"]
    print(f"{tag:<10} reloads={n}/{int(span)/1000:.1f}s (failed {rfail}) ok={r['requests_ok']} "
          f"failed={r['errors']} (reset {k['reset']}, eof {k['eof']}, tls {k['tls']}, timeout {k['timeout']}, "
          f"connect {k['connect']}, non200 {k['non200']}) forced_handshakes={r['forced_handshakes']} "
          f"idle_closed={r['idle_closed_by_server']} (after a Connection: close {r['responses_connection_close']}; {r['closes_seen']}) churn={r['churn_cycles']} versions={r['tls_versions']} "
          f"p50={r['p50_ms']}ms p99={r['p99_ms']}ms max={r['max_ms']}ms "
          f"processes_after={rd(tag, 'procs')} warn_lines={rd(tag, 'warn')}")
    rows.setdefault(name, []).append((int(n), r))
print()
def med(name, f):
    v = [f(n, r) for n, r in rows.get(name, []) if f(n, r) is not None]
    return statistics.median(v) if v else None
cols = [("reloads", lambda n, r: n), ("requests ok", lambda n, r: r["requests_ok"]),
        ("failed", lambda n, r: r["errors"]), ("forced handshakes", lambda n, r: r["forced_handshakes"]),
        ("p99 ms", lambda n, r: r["p99_ms"]), ("p50 ms", lambda n, r: r["p50_ms"])]
print(f"{'median of runs':<16}" + "".join(f"{c:>19}" for c, _ in cols))
for name in rows:
    print(f"{name:<16}" + "".join(f"{med(name, f)!s:>19}" for _, f in cols))
def ratio(a, b):
    if a is None or b is None:
        return "NA"
    if b == 0:
        return "=" if a == 0 else "inf"
    return f"{a / b:.2f}"
for peer in rows:
    if peer == "corral" or "corral" not in rows:
        continue
    print(f"{'corral/' + peer:<16}" + "".join(f"{ratio(med('corral', f), med(peer, f)):>19}" for _, f in cols))
EOF
