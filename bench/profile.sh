#!/usr/bin/env bash
# profile.sh: where a worker's time goes, and how many syscalls it spends per request /
# round trip, against the peer in the same run (issue 14, "profile first").
#
#   http: corral `http` (1 worker) vs nginx `return 200` (1 worker), wrk -t1 -c$CONNS
#   echo: corral `echo` (1 worker) vs the shared C echo_server, echo_load at $CONNS conns
#
# For each server: one run under `perf record -g` (cpu-clock, the box has no PMU
# counters), whose top symbols are printed; then one run under `strace -c -f` on the
# worker, whose syscall counts are divided by the requests / round trips the client
# counted in the same run. strace slows the server a lot, so only the per-request counts
# mean anything from that second run, not its rate.
#
# Usage: bench/profile.sh [http|echo|all]     Knobs: DURATION=5 CONNS=100 TOP=25
#        SERVER_CPU=1 CLIENT_CPU=0 NO_BUILD=1 KEEP=1 (perf data kept in the work dir)
# needs: perf (Debian linux-perf), strace, wrk, nginx, gcc.
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

WHAT=${1:-all}
DURATION=${DURATION:-5}
CONNS=${CONNS:-100}
TOP=${TOP:-25}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
command -v perf >/dev/null || die "needs perf (apt-get install -y linux-perf)"
command -v strace >/dev/null || die "needs strace (apt-get install -y strace)"
build_corral
ECHO_SERVER=$WORK/echo_server
ECHO_LOAD=$WORK/echo_load
gcc -O2 -o "$ECHO_SERVER" "$SHARED_BENCH/echo_server.c" || die "cannot build echo_server.c"
gcc -O2 -o "$ECHO_LOAD" "$SHARED_BENCH/echo_load.c" || die "cannot build echo_load.c"
LIMIT=$((DURATION * 6 + 120))

# server_start KIND PORT -> sets SERVER_PIDS (the one worker)
server_start() {
  case $1 in
  corral-http | corral-echo)
    local svc=${1#corral-} extra=""
    [[ $svc == http ]] && extra='body = "hello\n"'
    corral_start "$1-$2" "$LIMIT" "$SERVER_CPU" <<EOF
[master]
workers = 1
[worker]
max_connections = 19000
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$2"
service = "$svc"
backlog = 4096
$extra
EOF
    SERVER_PIDS=$(corral_workers | head -n1)
    ;;
  nginx)
    nginx_start "http-$2" "$LIMIT" "$SERVER_CPU" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
    default_type text/plain;
    access_log off;
    tcp_nodelay on;
    client_body_temp_path @PREFIX@/tmp;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / { return 200 "hello\n"; }
    }
}
EOF
    SERVER_PIDS=$(nginx_workers | head -n1)
    ;;
  c-echo)
    c_echo_start "$ECHO_SERVER" "$2" "$LIMIT" "$SERVER_CPU"
    SERVER_PIDS=$E_PID
    ;;
  esac
}
server_stop() {
  case $1 in
  corral-*) corral_stop ;;
  nginx) nginx_stop ;;
  c-echo) c_echo_stop ;;
  esac
}

# client KIND PORT -> prints the number of requests / round trips done
client() {
  case $1 in
  corral-http | nginx)
    timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
      "http://127.0.0.1:$2/" 2>&1 | awk '/requests in/ { print $1 }'
    ;;
  corral-echo | c-echo)
    timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" "$ECHO_LOAD" 127.0.0.1 "$2" "$CONNS" \
      "$DURATION" 64 2>/dev/null | grep -o "round_trips=[0-9]*" |
      head -n1 | cut -d= -f2
    ;;
  esac
}

profile_one() { # KIND
  local kind=$1 port n
  port=$(free_port)
  server_start "$kind" "$port"
  sleep 0.5
  # 1. perf: sample the worker while the client runs.
  timeout $((DURATION + 30)) perf record -q -F 2999 -g -o "$WORK/$kind.perf" -p "$SERVER_PIDS" \
    -- sleep "$DURATION" 2>/dev/null &
  local pp=$!
  STARTED+=("$pp")
  n=$(client "$kind" "$port")
  wait "$pp" 2>/dev/null || true
  echo "== $kind: perf, $n requests/round trips in ${DURATION}s at $CONNS conns (top $TOP self symbols)"
  perf report -i "$WORK/$kind.perf" --stdio --no-children -g none --sort dso 2>/dev/null |
    grep -E '^ +[0-9]' | awk '{ printf "   %s %s", $1, $2 } END { print "" }' || true
  perf report -i "$WORK/$kind.perf" --stdio --no-children -g none --sort dso,symbol 2>/dev/null |
    grep -E '^ +[0-9]' | cut -c1-140 | head -n "$TOP" || true
  # 2. strace -c on the worker during a second client run.
  timeout $((DURATION + 30)) strace -c -f -qq -o "$WORK/$kind.strace" -p "$SERVER_PIDS" &
  local sp=$!
  STARTED+=("$sp")
  sleep 0.5
  n=$(client "$kind" "$port")
  kill -INT "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  server_stop "$kind"
  echo "== $kind: syscalls per request/round trip under strace ($n done)"
  awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
      name = $NF; calls = $4; errs = (NF == 6) ? $5 : 0
      if (n > 0) printf "   %-16s %10d calls %8d errors %8.3f per op\n", name, calls, errs, calls / n
      tot += calls }
    END { if (n > 0) printf "   %-16s %10d calls %17s %8.3f per op\n", "total", tot, "", tot / n }' \
    "$WORK/$kind.strace"
  echo
}

case $WHAT in
http) kinds="corral-http nginx" ;;
echo) kinds="corral-echo c-echo" ;;
all) kinds="corral-http nginx corral-echo c-echo" ;;
corral-http | nginx | corral-echo | c-echo) kinds=$WHAT ;;
*) die "usage: bench/profile.sh [http|echo|all|corral-http|nginx|corral-echo|c-echo]" ;;
esac
for k in $kinds; do profile_one "$k"; done
KEEP=1
