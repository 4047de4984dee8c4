#!/usr/bin/env bash
# idle_memory.sh: user-space memory per idle connection, corral vs nginx, same run.
#
# For each N: a fresh server, its workers' memory (smaps_rollup: Pss, Rss, Private)
# sampled, N silent connections opened with corral-load --mode idle (several client
# processes, spread over source addresses 127.0.0.1..K), the memory sampled again once
# the server holds them all, then (after - before) / N. Runs alternate corral, nginx,
# corral, nginx, ... (REPS pairs) so host drift hits both alike.
#
#   corral: echo service, WORKERS workers, accept = "reuseport", idle_timeout 10m
#   nginx:  http server (the shared nginx-idle-*.conf settings: client_header_timeout
#           600s, access_log off), same worker count, listen ... reuseport,
#           worker_connections = corral's max_connections
#
# Neither server reads anything on these connections: nginx waits for a request line,
# corral's echo for bytes to echo. Both hold an accepted, registered, silent socket.
#
# Usage: bench/idle_memory.sh [N...]        default: 10000 100000
# Knobs: REPS=2 (corral/nginx pairs per N), WORKERS=auto (1 up to 15k connections,
#        else ceil(N/12500)), MAX_CONNS=19000 (per worker, both servers),
#        CONNECT_RATE=20000 (new connections/s, all clients together), SETTLE=3 (s),
#        ONLY="corral nginx", NO_BUILD=1, KEEP=1
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

NS=("$@")
((${#NS[@]})) || NS=(10000 100000)
REPS=${REPS:-2}
WORKERS=${WORKERS:-auto}
MAX_CONNS=${MAX_CONNS:-19000}
CONNECT_RATE=${CONNECT_RATE:-20000}
SETTLE=${SETTLE:-3}
ONLY=${ONLY:-"corral nginx"}
PER_CLIENT=16000   # connections per corral-load process (RLIMIT_NOFILE hard limit is 20000 here)
PER_IP=15000       # connections per source address (ephemeral range 32768-60999 = 28k ports)

build_corral
RES=$WORK/idle.tsv
: >"$RES"

workers_for() {
  local n=$1
  if [[ $WORKERS != auto ]]; then echo "$WORKERS"; return; fi
  if ((n <= 15000)); then echo 1; else echo $(((n + 12499) / 12500)); fi
}

# one SERVER N W REP
one() {
  local server=$1 n=$2 w=$3 rep=$4 port pids limit=$((300 + n / 500))
  port=$(free_port)
  if ((n > w * MAX_CONNS)); then die "$n connections need more than $w workers x $MAX_CONNS"; fi
  case $server in
  corral)
    corral_start "idle-$n-$rep" "$limit" <<EOF
[master]
workers = $w
[worker]
max_connections = $MAX_CONNS
idle_timeout = "10m"
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$port"
service = "echo"
accept = "reuseport"
backlog = 4096
EOF
    pids=$(corral_workers)
    ;;
  nginx)
    nginx_start "idle-$n-$rep" "$limit" <<EOF
user root;
worker_processes $w;
worker_rlimit_nofile 20000;
events { worker_connections $MAX_CONNS; }
http {
    default_type text/plain;
    access_log off;
    client_body_temp_path @PREFIX@/tmp/body;
    proxy_temp_path       @PREFIX@/tmp/proxy;
    fastcgi_temp_path     @PREFIX@/tmp/fastcgi;
    uwsgi_temp_path       @PREFIX@/tmp/uwsgi;
    scgi_temp_path        @PREFIX@/tmp/scgi;
    client_header_timeout 600s;
    keepalive_timeout 600s;
    server {
        listen 127.0.0.1:$port backlog=4096 reuseport;
        location / { return 200 "hello\n"; }
    }
}
EOF
    pids=$(nginx_workers)
    ;;
  esac
  local nw
  nw=$(echo "$pids" | wc -w)
  sleep 1
  local m0 s0 t0 la
  la=$(loadavg)
  m0=$(mem_sum $pids)
  s0=$(sockstat_tcp mem)
  t0=$(meminfo_kb Slab)

  # clients: ceil(n / PER_CLIENT) corral-load processes, ceil(n / PER_IP) source addresses
  local procs=$(((n + PER_CLIENT - 1) / PER_CLIENT)) ips=$(((n + PER_IP - 1) / PER_IP))
  local rate=$((CONNECT_RATE / procs)) cl=() i c
  ((rate > 0)) || rate=1
  for ((i = 0; i < procs; i++)); do
    c=$((n / procs + (i < n % procs ? 1 : 0)))
    timeout --kill-after=5 200 "$LOAD" --addr "127.0.0.1:$port" --mode idle --conns "$c" \
      --source-ips "$ips" --connect-rate "$rate" --duration 180 --json \
      >"$WORK/client-$server-$n-$rep-$i.json" 2>"$WORK/client-$server-$n-$rep-$i.err" &
    cl+=($!)
    STARTED+=($!)
  done
  # wait until the server side shows n established connections (or 120 s)
  local t_start est deadline
  t_start=$(now_ms)
  deadline=$((t_start + 120000))
  while :; do
    est=$(estab_count "$port")
    ((est >= n)) && break
    (($(now_ms) < deadline)) || { log "only $est of $n established after 120 s"; break; }
    sleep 0.5
  done
  local conn_s
  conn_s=$(awk -v ms=$(($(now_ms) - t_start)) 'BEGIN { printf "%.1f", ms / 1000 }')
  sleep "$SETTLE"
  local m1 s1 t1 est1
  m1=$(mem_sum $pids)
  s1=$(sockstat_tcp mem)
  t1=$(meminfo_kb Slab)
  est1=$(estab_count "$port")
  local spread="-"
  if [[ $server == corral ]]; then
    # connections per worker, from corral status (CONNS column): min/max over workers
    spread=$(timeout 10 "$CORRAL" status -c "$C_CONF" 2>/dev/null |
      awk '$4 == "ready" { n++; if (min == "" || $6 < min) min = $6; if ($6 > max) max = $6 } END { if (n) printf "%d..%d", min, max; else print "-" }')
  fi
  for c in "${cl[@]}"; do kill -TERM "$c" 2>/dev/null || true; done
  for c in "${cl[@]}"; do wait "$c" 2>/dev/null || true; done
  # after the clients are gone: does the memory come back? (wait until the server holds none)
  deadline=$(($(now_ms) + 30000))
  while (($(estab_count "$port") > 0 && $(now_ms) < deadline)); do sleep 0.5; done
  sleep 2
  local m2
  m2=$(mem_sum $pids)
  local problems="-"
  [[ $server == corral ]] && problems=$(corral_log_problems "idle-$n-$rep")
  local errs=0 f e
  for f in "$WORK"/client-$server-$n-$rep-*.json; do
    e=$(jget total "$f" 2>/dev/null || echo 0)
    errs=$((errs + ${e:-0}))
  done
  case $server in corral) corral_stop ;; nginx) nginx_stop ;; esac

  read -r r0 p0 u0 <<<"$m0"
  read -r r1 p1 u1 <<<"$m1"
  read -r _ p2 _ <<<"$m2"
  local pc
  pc() { awk -v a="$1" -v b="$2" -v n="$est1" -v m="$3" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * m / n; else print "NA" }'; }
  printf '%s\tN=%d\tworkers=%d\test=%d\tclient_errors=%d\tconnect_s=%s\tpss_kB=%d->%d\tpss_B/conn=%s\trss_B/conn=%s\tprivate_B/conn=%s\tpss_total_B/conn=%s\tsockstat_mem_pages=%s->%s\tslab_B/conn(both_ends)=%s\tpss_after_close_kB=%d\tconns_per_worker=%s\tlog_warn_err=%s\tloadavg=%s\n' \
    "$server" "$n" "$nw" "$est1" "$errs" "$conn_s" "$p0" "$p1" \
    "$(pc "$p0" "$p1" 1024)" "$(pc "$r0" "$r1" 1024)" "$(pc "$u0" "$u1" 1024)" "$(pc 0 "$p1" 1024)" \
    "$s0" "$s1" "$(pc "$t0" "$t1" 1024)" "$p2" "$spread" "$problems" "$la" | tee -a "$RES"
  sleep 2
}

for n in "${NS[@]}"; do
  w=$(workers_for "$n")
  log "== N=$n: $w workers each, $REPS alternating pair(s): $ONLY"
  for ((r = 1; r <= REPS; r++)); do
    for s in $ONLY; do one "$s" "$n" "$w" "$r"; done
  done
done

echo
echo "== summary (medians over runs; B/conn = bytes of the workers' memory per held connection)"
printf '%-8s %-8s %-4s | %-22s | %-22s | %-22s | %s\n' N workers "" "delta Pss B/conn" "delta Rss B/conn" "total worker Pss B/conn" "Pss ratio corral/nginx"
for n in "${NS[@]}"; do
  get() { grep -P "^$1\tN=$n\t" "$RES" | grep -o "$2=[0-9.NA-]*" | cut -d= -f2 | median; }
  cp=$(get corral pss_B/conn) np=$(get nginx pss_B/conn)
  cr=$(get corral rss_B/conn) nr=$(get nginx rss_B/conn)
  ct=$(get corral pss_total_B/conn) nt=$(get nginx pss_total_B/conn)
  printf '%-8s %-8s %-4s | corral %6s nginx %6s | corral %6s nginx %6s | corral %6s nginx %6s | delta %s, total %s\n' \
    "$n" "$(workers_for "$n")" "" "$cp" "$np" "$cr" "$nr" "$ct" "$nt" "$(ratio "$cp" "$np")" "$(ratio "$ct" "$nt")"
done
echo "(raw lines: above; kernel socket memory is not included in B/conn — see slab column, both ends of each connection)"
