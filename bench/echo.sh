#!/usr/bin/env bash
# echo.sh: echo round trips/s and latency at CONNS connections, corral vs a C echo server.
#
# Peer: the shared bench's echo_server.c (single-threaded level-triggered epoll, one
# read() then one write() per event, no buffering: the floor for a one-worker echo).
# nginx has no echo service, so it is not in this comparison.
#
# Same pinning for both: the server on CPU SERVER_CPU (corral: master and its 1 worker,
# via taskset on the master; workers inherit it), the client on CPU CLIENT_CPU. Clients:
# corral-load (closed loop, flat out, 64-byte messages, each checked) and, if CLIENTS
# includes it, the shared echo_load.c. Runs alternate corral, peer, corral, peer, ...
#
# Usage: bench/echo.sh                 (defaults below)
# Knobs: CONNS=1000 RUNS=3 DURATION=10 SIZE=64 CLIENTS="corral-load echo_load"
#        SERVER_CPU=1 CLIENT_CPU=0 NO_BUILD=1 KEEP=1
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

CONNS=${CONNS:-1000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
SIZE=${SIZE:-64}
CLIENTS=${CLIENTS:-"corral-load echo_load"}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}

build_corral
ECHO_SERVER=$WORK/echo_server
ECHO_LOAD=$WORK/echo_load
gcc -O2 -o "$ECHO_SERVER" "$SHARED_BENCH/echo_server.c" || die "cannot build echo_server.c"
gcc -O2 -o "$ECHO_LOAD" "$SHARED_BENCH/echo_load.c" || die "cannot build echo_load.c"
RES=$WORK/echo.tsv
: >"$RES"

start_server() { # corral|c-echo PORT
  case $1 in
  corral)
    corral_start "echo-$2" $((RUNS * DURATION * 4 + 300)) "$SERVER_CPU" <<EOF
[master]
workers = 1
[worker]
max_connections = 19000
idle_timeout = "10m"
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$2"
service = "echo"
backlog = 4096
EOF
    SERVER_PIDS=$(corral_workers)
    ;;
  c-echo)
    c_echo_start "$ECHO_SERVER" "$2" $((RUNS * DURATION * 4 + 300)) "$SERVER_CPU"
    SERVER_PIDS=$E_PID
    ;;
  esac
}
stop_server() {
  case $1 in
  corral) corral_stop ;;
  c-echo) c_echo_stop ;;
  esac
}

# run_client CLIENT PORT TAG -> "rt_per_s p50 p99 p999 errors"
run_client() {
  local client=$1 port=$2 tag=$3
  case $client in
  corral-load)
    local threads=1
    timeout --kill-after=5 $((DURATION + 60)) taskset -c "$CLIENT_CPU" "$LOAD" \
      --addr "127.0.0.1:$port" --mode echo --conns "$CONNS" --threads "$threads" \
      --size "$SIZE" --duration "$DURATION" --json >"$WORK/$tag.json" 2>"$WORK/$tag.err" || true
    local f=$WORK/$tag.json
    [[ -s $f ]] || { echo "NA NA NA NA NA"; return; }
    echo "$(jget round_trips_per_s "$f" | cut -d. -f1) $(jlat p50 "$f") $(jlat p99 "$f") $(jlat p999 "$f") $(jget total "$f")"
    ;;
  echo_load)
    local line
    line=$(timeout --kill-after=5 $((DURATION + 60)) taskset -c "$CLIENT_CPU" "$ECHO_LOAD" \
      127.0.0.1 "$port" "$CONNS" "$DURATION" "$SIZE" 2>"$WORK/$tag.err" | grep '^ECHORESULT') || true
    [[ -n $line ]] || { echo "NA NA NA NA NA"; return; }
    local rt_per_s p50_us p99_us p999_us errors
    eval "$(echo "$line" | tr ' ' '\n' | grep -E '^(rt_per_s|p50_us|p99_us|p999_us|errors)=')"
    echo "${rt_per_s%.*} $p50_us $p99_us $p999_us $errors"
    ;;
  esac
}

for client in $CLIENTS; do
  for ((r = 1; r <= RUNS; r++)); do
    for server in corral c-echo; do
      port=$(free_port)
      start_server "$server" "$port"
      sleep 0.5
      quiet=$(wait_quiet)
      la=$(loadavg)
      c0=$(cpu_snap)
      t0=$(cpu_ticks $SERVER_PIDS)
      s0=$(now_ms)
      read -r rt p50 p99 p999 errs < <(run_client "$client" "$port" "$server-$client-$r")
      s1=$(now_ms)
      t1=$(cpu_ticks $SERVER_PIDS)
      c1=$(cpu_snap)
      cpu=$(cpu_pct "$t0" "$t1" "$(awk -v a="$s0" -v b="$s1" 'BEGIN { print (b - a) / 1000 }')")
      problems=""
      [[ $server == corral ]] && problems="corral_log_warn_err=$(corral_log_problems "echo-$port")"
      stop_server "$server"
      printf '%s\tclient=%s\trun=%d\tconns=%d\tsize=%d\trt/s=%s\tp50_us=%s\tp99_us=%s\tp999_us=%s\terrors=%s\tserver_cpu%%=%s\tbusy: %s\tloadavg=%s\t%s\t%s\n' \
        "$server" "$client" "$r" "$CONNS" "$SIZE" "$rt" "$p50" "$p99" "$p999" "$errs" "$cpu" \
        "$(cpu_busy "$c0" "$c1")" "$la" "$quiet" "$problems" | tee -a "$RES"
      sleep 1
    done
  done
done

echo
echo "== summary: $CONNS connections, ${SIZE}-byte messages, ${DURATION}s x $RUNS runs, server CPU $SERVER_CPU, client CPU $CLIENT_CPU (medians)"
echo "   pair ratio = median over runs of corral/C within the same run (robust to drift between runs)"
echo "   server us/rt = server CPU time per round trip (server_cpu% / rt/s), the server's own cost"
printf '%-12s | %-40s | %-22s | %-22s | %s\n' client "round trips/s (pair ratio)" "p50 us" "p99 us (pair ratio)" "server us/rt"
for client in $CLIENTS; do
  get() { grep -P "^$1\tclient=$client\t" "$RES" | grep -oP "\t$2=\K[0-9.NA]+" | median; }
  # per-run values in run order, for pair ratios and CPU per round trip
  col() { grep -P "^$1\tclient=$client\t" "$RES" | grep -oP "\t$2=\K[0-9.NA]+"; }
  pair() { paste <(col corral "$1") <(col c-echo "$1") | awk '$2 > 0 { print $1 / $2 }' | median; }
  usrt() { paste <(col "$1" server_cpu%) <(col "$1" rt/s) | awk '$2 > 0 { print $1 / 100 * 1e6 / $2 }' | median; }
  a=$(get corral rt/s) b=$(get c-echo rt/s)
  a5=$(get corral p50_us) b5=$(get c-echo p50_us)
  a9=$(get corral p99_us) b9=$(get c-echo p99_us)
  printf '%-12s | corral %7s C %7s (x%.2f)    | corral %6s C %6s | corral %6s C %6s (x%.2f) | corral %.1f C %.1f\n' \
    "$client" "$a" "$b" "$(pair rt/s)" "$a5" "$b5" "$a9" "$b9" "$(pair p99_us)" "$(usrt corral)" "$(usrt c-echo)"
done
echo "(ratios are corral / C echo_server: > 1 is better for round trips/s, worse for latency)"
