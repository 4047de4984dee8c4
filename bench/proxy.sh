#!/usr/bin/env bash
# proxy.sh: TCP (L4) proxy throughput, corral `proxy` vs nginx `stream` vs HAProxy
# `mode tcp`, with iperf3 through each (client -> proxy -> iperf3 server), 1 and 8 streams.
#
# Proxies (the shared bench's configs, regenerated on free ports):
#   corral-1w / corral-2w   [[listen]] service = "proxy", upstreams = [iperf3], 1 / 2 workers
#   corral-1w-splice        the same with `splice = true`; haproxy-1t-splice: option splice-auto
#   nginx-1w / nginx-2w     stream { server { proxy_pass iperf3; } }, stock 16k buffer
#   haproxy-1t / haproxy-2t mode tcp, nbthread 1 / 2, no splice
#   direct                  iperf3 without a proxy (the ceiling of this box)
#   nginx-1w-64k, haproxy-1t-64k, ... (not run by default): the peer with 64 KiB buffers
#                           (nginx proxy_buffer_size 64k; HAProxy tune.bufsize 65536), the
#                           size corral reads at once (read_quantum), to tell buffer size
#                           from design
# Nothing is pinned (iperf3 client, proxy, iperf3 server: 3 busy processes on 2 CPUs).
# Each round runs every proxy once, in order, so host drift is spread over all of them.
#
# Reported: Gbit/s received by the iperf3 server, CPU of the proxy processes (corral and
# nginx: their workers; HAProxy: its process) in % of one core, MB the server received
# per CPU second of the proxy processes (MB/cpu_s: per-core efficiency, what a loaded box
# does not distort), busy % of each CPU; ratios corral / peer of Gbit/s and of MB/cpu_s.
#
# MODE=sockperf: small-message latency instead of throughput: a sockperf TCP server
# behind every proxy, `sockperf ping-pong -m 64` through it for DURATION s; reports the
# median (p50), average and p99 round-trip latency in us, and corral / peer ratios
# (< 1: corral is faster). STREAMS is ignored (one connection).
#
# TRACE=strace / TRACE=perf: after each proxy's measured runs, one more iperf3 run of
# TRACE_S seconds (default 3) per stream count with the tracer attached to the proxy
# processes for the whole run: `strace -c -f` (every thread) gives syscalls per MB moved
# and the mean bytes per read / send; `perf record -g` gives the top symbols by self
# share. Files: $WORK/trace-NAME-PN.* (kept with KEEP=1); a summary at the end. Rates
# under a tracer mean nothing; only the per-byte counts and the shares do.
#
# Usage: bench/proxy.sh            MODE=sockperf bench/proxy.sh
# Knobs: RUNS=2 DURATION=10 STREAMS="1 8" PROXIES="direct corral-1w nginx-1w haproxy-1t
#        corral-2w nginx-2w haproxy-2t" NO_BUILD=1 KEEP=1 TRACE= TRACE_S=3
#        PORT_MIN= PORT_MAX= (listen ports from this range only, for a shared box)
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

RUNS=${RUNS:-2}
DURATION=${DURATION:-10}
STREAMS=${STREAMS:-"1 8"}
PROXIES=${PROXIES:-"direct corral-1w nginx-1w haproxy-1t corral-2w nginx-2w haproxy-2t"}
MODE=${MODE:-iperf3}
if [[ $MODE == sockperf ]]; then
  command -v sockperf >/dev/null || die "sockperf missing (apt-get install -y sockperf)"
  STREAMS=1
else
  command -v iperf3 >/dev/null || die "iperf3 missing (apt-get install -y iperf3)"
fi

TRACE=${TRACE:-}
TRACE_S=${TRACE_S:-3}
case $TRACE in
"") ;;
strace | perf) command -v "$TRACE" >/dev/null || die "$TRACE missing" ;;
*) die "TRACE must be strace or perf" ;;
esac

build_corral
RES=$WORK/proxy.tsv
TRC=$WORK/trace.tsv
: >"$TRC"
: >"$RES"
LIMIT=$((RUNS * 60 * 2 * (DURATION + 10) + 600))

# iperf3 server behind every proxy, for the whole run
IPORT=$(free_port)
if [[ $MODE == sockperf ]]; then
  timeout --kill-after=5 "$LIMIT" sockperf server --tcp -i 127.0.0.1 -p "$IPORT" >"$WORK/sockperf-server.log" 2>&1 &
else
  timeout --kill-after=5 "$LIMIT" iperf3 -s -B 127.0.0.1 -p "$IPORT" >"$WORK/iperf3-server.log" 2>&1 &
fi
IPERF_WRAPPER=$!
STARTED+=("$IPERF_WRAPPER")
sleep 1
IPERF_PID=$(cat /proc/"$IPERF_WRAPPER"/task/*/children | xargs)
[[ -n $IPERF_PID ]] || die "$MODE server did not start"

# sockperf_run PORT TAG -> "p50 avg p99" in us (NA when it failed)
sockperf_run() {
  local f=$WORK/sockperf-$2.txt
  timeout $((DURATION + 30)) sockperf ping-pong --tcp -i 127.0.0.1 -p "$1" -t "$DURATION" -m 64 \
    >"$f" 2>&1 || true
  local avg p50 p99
  avg=$(grep -o 'avg-latency=[0-9.]*' "$f" | cut -d= -f2)
  p50=$(awk '/percentile 50.000/ { print $NF }' "$f")
  p99=$(awk '/percentile 99.000/ { print $NF }' "$f")
  echo "${p50:-NA} ${avg:-NA} ${p99:-NA}"
}

# mb_per_cpu_s BYTES TICKS0 TICKS1 -> MB (1e6 bytes) the proxy moved per second of its CPU:
# the figure a loaded box does not distort (Gbit/s is whoever the scheduler favoured).
mb_per_cpu_s() {
  awk -v n="$1" -v a="$2" -v b="$3" -v hz="$CLK_TCK" \
    'BEGIN { if (n == "NA" || b <= a) print "NA"; else printf "%.0f", n / 1e6 / ((b - a) / hz) }'
}

# trace_run NAME PORT P: one iperf3 run of TRACE_S s with $TRACE on the proxy processes;
# appends a line to $TRC.
trace_run() {
  local name=$1 port=$2 P=$3 f=$WORK/trace-$1-P$3 tids=() p t
  for p in $PROXY_PIDS; do
    for t in /proc/"$p"/task/*; do tids+=(-p "${t##*/}"); done
  done
  ((${#tids[@]})) || return 0
  local tpid
  if [[ $TRACE == strace ]]; then
    timeout $((TRACE_S + 60)) strace -c -f -o "$f.strace" "${tids[@]}" 2>/dev/null &
  else
    timeout $((TRACE_S + 60)) perf record -q -e cpu-clock -g -F 2999 -o "$f.perf" -p "$(echo $PROXY_PIDS | tr ' ' ,)" \
      >/dev/null 2>&1 &
  fi
  tpid=$!
  STARTED+=("$tpid")
  sleep 1
  timeout $((TRACE_S + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$TRACE_S" -P "$P" -J >"$f.json" || true
  kill -INT "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  local bytes
  bytes=$(python3 -c '
import json, sys
try:
    print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"])
except Exception:
    print(0)' "$f.json")
  if [[ $TRACE == strace ]]; then
    # per MB: every syscall, the reads, the sends, epoll_wait, epoll_ctl; bytes per read/send
    awk -v mb="$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" -v name="$name" -v P="$P" -v b="$bytes" '
      $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
        calls = $4; sc = $NF
        tot += calls
        if (sc ~ /^(read|recvfrom|recvmsg|readv)$/) rd += calls
        else if (sc ~ /^(write|sendto|sendmsg|writev)$/) wr += calls
        else if (sc ~ /^epoll_(p?wait|pwait2)$/) ew += calls
        else if (sc == "epoll_ctl") ec += calls
      }
      END {
        if (mb <= 0) { printf "%s\tP=%s\tbytes=0\n", name, P; exit }
        printf "%s\tP=%s\tMB=%.0f\tsyscalls/MB=%.2f\treads/MB=%.2f\tsends/MB=%.2f\tepoll_wait/MB=%.2f\tepoll_ctl/MB=%.3f\tKiB/read=%.1f\tKiB/send=%.1f\n",
          name, P, mb, tot / mb, rd / mb, wr / mb, ew / mb, ec / mb,
          rd ? b / rd / 1024 : 0, wr ? b / wr / 1024 : 0
      }' "$f.strace" | tee -a "$TRC"
  else
    # (the whole report first: head closing the pipe early would fail it under pipefail)
    perf report -i "$f.perf" --no-children --sort sym --stdio >"$f.report" 2>/dev/null || true
    perf report -i "$f.perf" --no-children --sort dso --stdio 2>/dev/null |
      grep -E '^ +[0-9.]+%' >"$f.dso" || true
    grep -E '^ +[0-9.]+%' "$f.report" | sed -n 1,40p >"$f.top" || true
    printf '%s\tP=%s\tMB=%.0f\ttop: %s\n' "$name" "$P" "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" \
      "$(awk 'NR <= 8 { printf "%s %s; ", $1, $NF }' "$f.top") kernel $(awk '/kernel/ { print $1 }' "$f.dso")" |
      tee -a "$TRC"
  fi
}

H_WRAPPER=""
start_proxy() { # NAME PORT -> sets PROXY_PIDS
  local name=$1 port=$2
  case $name in
  direct) PROXY_PIDS="" ;;
  corral-*)
    local w=${name#corral-} extra=""
    if [[ $w == *-splice ]]; then extra="splice = true"; w=${w%-splice}; fi
    w=${w%w}
    corral_start "$name-$port" $((RUNS * 2 * (DURATION + 10) + 300)) <<EOF
[master]
workers = $w
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$port"
service = "proxy"
upstreams = ["127.0.0.1:$IPORT"]
backlog = 4096
$extra
EOF
    PROXY_PIDS=$(corral_workers | xargs)
    ;;
  nginx-*)
    local w=${name#nginx-} buf="" b
    b=${w#*-}
    [[ $b == "$w" ]] && b="" || buf="proxy_buffer_size $b;"
    w=${w%%-*}
    w=${w%w}
    nginx_start "$name-$port" $((RUNS * 2 * (DURATION + 10) + 300)) <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes $w;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
stream {
    server {
        listen 127.0.0.1:$port backlog=4096;
        proxy_pass 127.0.0.1:$IPORT;
        $buf
    }
}
EOF
    PROXY_PIDS=$(nginx_workers | xargs)
    ;;
  haproxy-*)
    local t=${name#haproxy-} tune="" b splice=""
    if [[ $t == *-splice ]]; then splice="option splice-auto"; t=${t%-splice}; fi
    b=${t#*-}
    [[ $b == "$t" ]] && b="" || tune="tune.bufsize $((${b%k} * 1024))"
    t=${t%%-*}
    t=${t%t}
    cat >"$WORK/$name-$port.cfg" <<EOF
global
    nbthread $t
    maxconn 4000
    $tune
    log stderr format short local0 err
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    $splice
frontend fe_tcp
    bind 127.0.0.1:$port
    default_backend be_iperf
backend be_iperf
    server iperf 127.0.0.1:$IPORT
EOF
    timeout --kill-after=5 $((RUNS * 2 * (DURATION + 10) + 300)) haproxy -f "$WORK/$name-$port.cfg" -db \
      >"$WORK/$name-$port.log" 2>&1 &
    H_WRAPPER=$!
    STARTED+=("$H_WRAPPER")
    local deadline=$(($(now_ms) + 60000)) # ss is slow with many sockets on the box
    until ss -Htln "( sport = :$port )" | grep -q .; do
      alive "$H_WRAPPER" || { cat "$WORK/$name-$port.log" >&2; die "haproxy exited"; }
      (($(now_ms) < deadline)) || die "haproxy not listening"
      sleep 0.1
    done
    PROXY_PIDS=$(cat /proc/"$H_WRAPPER"/task/*/children | xargs)
    ;;
  esac
}
stop_proxy() {
  case $1 in
  corral-*) corral_stop ;;
  nginx-*) nginx_stop ;;
  haproxy-*)
    kill -TERM "$H_WRAPPER" 2>/dev/null || true
    wait "$H_WRAPPER" 2>/dev/null || true
    H_WRAPPER=""
    ;;
  esac
}

for ((r = 1; r <= RUNS; r++)); do
  for name in $PROXIES; do
    port=$IPORT
    [[ $name == direct ]] || port=$(free_port)
    start_proxy "$name" "$port"
    sleep 0.5
    for P in $STREAMS; do
      j=$WORK/iperf-$name-P$P-$r.json
      quiet=$(wait_quiet)
      la=$(loadavg)
      c0=$(cpu_snap)
      p0=$(cpu_ticks $PROXY_PIDS)
      s0=$(now_ms)
      if [[ $MODE == sockperf ]]; then
        read -r sp50 savg sp99 < <(sockperf_run "$port" "$name-$r")
        s1=$(now_ms)
        p1=$(cpu_ticks $PROXY_PIDS)
        printf '%s\trun=%d\tp50_us=%s\tavg_us=%s\tp99_us=%s\tloadavg=%s\t%s\n' \
          "$name" "$r" "$sp50" "$savg" "$sp99" "$la" "$quiet" | tee -a "$RES"
        sleep 1
        continue
      fi
      timeout $((DURATION + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -P "$P" -J >"$j" || true
      s1=$(now_ms)
      p1=$(cpu_ticks $PROXY_PIDS)
      c1=$(cpu_snap)
      read -r gbps bytes < <(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    r = d["end"]["sum_received"]
    print("NA NA" if "error" in d else "%.2f %d" % (r["bits_per_second"] / 1e9, r["bytes"]))
except Exception:
    print("NA NA")' "$j")
      pcpu=NA mbcpu=NA
      if [[ -n $PROXY_PIDS ]]; then
        pcpu=$(cpu_pct "$p0" "$p1" "$(awk -v a="$s0" -v b="$s1" 'BEGIN { print (b - a) / 1000 }')")
        mbcpu=$(mb_per_cpu_s "$bytes" "$p0" "$p1")
      fi
      printf '%s\tP=%s\trun=%d\tGbit/s=%s\tproxy_cpu%%=%s\tMB/cpu_s=%s\tbusy: %s\tloadavg=%s\t%s\n' \
        "$name" "$P" "$r" "$gbps" "$pcpu" "$mbcpu" "$(cpu_busy "$c0" "$c1")" "$la" "$quiet" | tee -a "$RES"
      sleep 1
    done
    if [[ -n $TRACE && $r == 1 && $MODE == iperf3 ]]; then
      for P in $STREAMS; do trace_run "$name" "$port" "$P"; done
    fi
    [[ $name == corral-* ]] && log "corral $name log: $(corral_log_problems "$name-$port") WARN/ERROR lines"
    stop_proxy "$name"
  done
done

if [[ $MODE == sockperf ]]; then
  echo
  echo "== summary: sockperf ping-pong -m 64 -t $DURATION through each proxy, $RUNS runs (medians, us)"
  sget() { grep -P "^$1\trun=" "$RES" | grep -oP "\t$2=\K[0-9.NA]+" | median; }
  printf '%-18s %10s %10s %10s %18s\n' proxy p50 avg p99 "corral-1w/this p50"
  c50=$(sget corral-1w p50_us)
  for name in $PROXIES; do
    a=$(sget "$name" p50_us)
    printf '%-18s %10s %10s %10s %18s\n' "$name" "$a" "$(sget "$name" avg_us)" "$(sget "$name" p99_us)" "$(ratio "$c50" "$a")"
  done
  echo "(ratio < 1: corral-1w's median round trip is shorter than this proxy's, same run)"
  exit 0
fi

echo
echo "== summary: iperf3 -t $DURATION, $RUNS runs each (medians); CPU = proxy processes, % of one core"
printf '%-12s' proxy
for P in $STREAMS; do printf ' | %-26s' "P=$P Gbit/s (cpu%)"; done
echo
get() { grep -P "^$1\tP=$2\t" "$RES" | grep -oP "\t$3=\K[0-9.NA]+" | median; }
for name in $PROXIES; do
  printf '%-12s' "$name"
  for P in $STREAMS; do
    c=$(get "$name" "$P" proxy_cpu%)
    [[ $name == direct ]] && c=-
    printf ' | %8s (%4s%%)            ' "$(get "$name" "$P" Gbit/s)" "$c"
  done
  echo
done
echo
echo "== MB moved per CPU second of the proxy processes (medians; the robust figure on a shared box)"
printf '%-18s' proxy
for P in $STREAMS; do printf ' | %10s' "P=$P"; done
echo
for name in $PROXIES; do
  [[ $name == direct ]] && continue
  printf '%-18s' "$name"
  for P in $STREAMS; do printf ' | %10s' "$(get "$name" "$P" MB/cpu_s)"; done
  echo
done
echo
for key in Gbit/s MB/cpu_s; do
  echo "== ratios corral / peer ($key; medians), for every peer run at corral's worker count"
  for w in 1 2; do
    for cname in $PROXIES; do
      case $cname in corral-${w}w | corral-${w}w-*) ;; *) continue ;; esac
      grep -qP "^$cname\t" "$RES" || continue
      for P in $STREAMS; do
        c=$(get "$cname" "$P" "$key")
        line="$cname, P=$P:"
        for peer in $PROXIES; do
          case $peer in nginx-${w}w | nginx-${w}w-* | haproxy-${w}t | haproxy-${w}t-*) ;; *) continue ;; esac
          line+=" $cname/$peer $(ratio "$c" "$(get "$peer" "$P" "$key")")"
        done
        echo "$line"
      done
    done
  done
done
if [[ -n $TRACE ]]; then
  echo
  echo "== $TRACE on the proxy processes, one ${TRACE_S} s iperf3 run each (files: $WORK/trace-*)"
  cat "$TRC"
fi
