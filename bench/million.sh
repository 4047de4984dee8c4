#!/usr/bin/env bash
# million.sh: hold N idle connections to corral (default 1,000,000), reload and upgrade
# while holding them, and measure what it costs. A benchmark, not a test.
#
#   corral: SERVICE (echo) with accept = "reuseport", ceil(N / 18000) workers (at least 3;
#           RLIMIT_NOFILE's hard limit is 20000 per process), PORTS listen ports in
#           11000-11999; clients: ceil(N / 18000) `corral-load --mode idle` processes
#           over ceil(N / 20000) source addresses 127.0.0.x (28k ephemeral ports per
#           (source, destination) pair).
#   measured: time to establish; connections per worker (min..max); user-space bytes per
#           connection (workers' Pss from smaps_rollup, minus the idle baseline); kernel
#           memory (sockstat TCP mem, Slab); `corral status` latency; idle CPU (master +
#           workers, 5 s); a reload and a binary upgrade while holding them (wall time,
#           where the connections are afterwards); SAMPLE echo connections doing round
#           trips before, during and after (echo only); how many held connections were
#           lost; worker memory after the clients left.
#   SERVICE=http holds idle keep-alive HTTP connections instead. Both kinds move to the
#           new generation at a reload and to the new master's workers at an upgrade
#           (echo ones are suspended between round trips); what cannot move in time
#           stays until its client closes it or drain_timeout (DRAIN_TIMEOUT) cuts it.
#
# Box safety: 1M loopback pairs cost ~10 GB of kernel memory. The script refuses to start
# unless MemAvailable covers N x 12 KB + 3 GiB (and >= 16 GiB for N >= 500k), checks
# MemAvailable every second while it runs and stops cleanly, printing what it reached,
# if it falls below 3 GiB. Total deadline: DEADLINE_S (default 1500 s; clients hold at
# most DEADLINE_S - 60 s); every process
# runs under `timeout` and the exit trap (also on Ctrl-C) kills, by pid, all it started.
#
# Usage: bench/million.sh [N]
# Knobs: SERVICE=echo|http PORTS=2 CONNECT_RATE=20000 SAMPLE=200 DRAIN_TIMEOUT=10m
#        DEADLINE_S=1500 MIN_AVAIL_GB=3 NO_BUILD=1 KEEP=1 LOG_LEVEL=warn (info logs each
#        worker's hand-over counts) MOVE_WAIT_S=300 (longest wait for one move to finish)
#        ALIVE_CHECK_MS=10000 (how often each client MSG_PEEKs every held connection,
#        besides epoll's close events: at 1 s, 1M checks/s cost the clients a core)
#        HOGS=0 (that many CPU hogs, `timeout`-bounded busy loops, run beside corral
#        during the reload and the upgrade: the issue's "box loaded" case; killed by
#        pid when the moves are done)
# Last line: held=<N> lost=<M> establish_s=<S> user_bytes_per_conn=<B>
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

N=${1:-1000000}
SERVICE=${SERVICE:-echo}
PORTS=${PORTS:-2}
CONNECT_RATE=${CONNECT_RATE:-20000}
SAMPLE=${SAMPLE:-200}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-10m}
DEADLINE_S=${DEADLINE_S:-1500}
LOG_LEVEL=${LOG_LEVEL:-warn}
MOVE_WAIT_S=${MOVE_WAIT_S:-300}
MIN_AVAIL_GB=${MIN_AVAIL_GB:-3}
ALIVE_CHECK_MS=${ALIVE_CHECK_MS:-10000}
HOGS=${HOGS:-0}
PER_WORKER=18000
PER_CLIENT=18000
PER_IP=20000
T_START=$(now_ms)
T_END=$((T_START + DEADLINE_S * 1000))
MIN_AVAIL_KB=$((MIN_AVAIL_GB * 1024 * 1024))

[[ $SERVICE == echo || $SERVICE == http ]] || die "SERVICE=$SERVICE: echo or http"
((N >= 1)) || die "N=$N: at least 1"
avail=$(meminfo_kb MemAvailable)
need=$((N * 12 + MIN_AVAIL_KB))
((N < 500000 || avail >= 16 * 1024 * 1024)) || die "N=$N needs MemAvailable >= 16 GiB (now $((avail / 1024)) MiB)"
((avail >= need)) || die "N=$N needs ~$((need / 1024)) MiB available (N x 12 KB + ${MIN_AVAIL_GB} GiB), have $((avail / 1024)) MiB"

WORKERS=$(((N + PER_WORKER - 1) / PER_WORKER))
((WORKERS >= 3)) || WORKERS=3
PROCS=$(((N + PER_CLIENT - 1) / PER_CLIENT))
IPS=$(((N + PER_IP - 1) / PER_IP))
((IPS <= 250)) || IPS=250
BASE_PORT=$((11000 + RANDOM % 900))
HOLD_S=$((DEADLINE_S - 60))
((HOLD_S <= 1790)) || HOLD_S=1790   # corral-load runs at most 1800 s
STOP_REASON=""

build_corral
log "N=$N service=$SERVICE workers=$WORKERS ports=$PORTS client-processes=$PROCS source-ips=$IPS MemAvailable=$((avail / 1024)) MiB"

# mem_ok: false (and STOP_REASON set) when the box is short of memory or time is up
mem_ok() {
  local a
  a=$(meminfo_kb MemAvailable)
  if ((a < MIN_AVAIL_KB)); then STOP_REASON="MemAvailable $((a / 1024)) MiB < ${MIN_AVAIL_GB} GiB"; return 1; fi
  if (($(now_ms) > T_END - 45000)); then STOP_REASON="deadline ${DEADLINE_S}s"; return 1; fi
  return 0
}

listen_blocks() {
  local i
  for ((i = 0; i < PORTS; i++)); do
    printf '[[listen]]\naddress = "127.0.0.1:%d"\nservice = "%s"\naccept = "reuseport"\nbacklog = 4096\n' $((BASE_PORT + i)) "$SERVICE"
  done
}

corral_start million $((DEADLINE_S + 60)) <<EOF
[master]
workers = $WORKERS
drain_timeout = "$DRAIN_TIMEOUT"
max_old_generations = 4
upgrade_timeout = "120s"
[worker]
max_connections = 19000
idle_timeout = "30m"
[log]
level = "$LOG_LEVEL"
$(listen_blocks)
EOF
T_READY=$(now_ms)
log "corral ready: $WORKERS workers, $((T_READY - T_START)) ms after the script started"

status_json() { timeout 30 "$CORRAL" status --json -c "$C_CONF" 2>/dev/null || echo '{}'; }
conns_total() { status_json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(sum(w.get("connections",0) for w in j.get("workers",[])))' 2>/dev/null || echo 0; }
# per generation: workers/connections
conns_by_gen() { status_json | python3 -c '
import json,sys,collections
j=json.load(sys.stdin); g=collections.Counter(); n=collections.Counter()
for w in j.get("workers",[]): g[w["generation"]]+=w.get("connections",0); n[w["generation"]]+=1
print(" ".join(f"gen{k}:{n[k]}w/{g[k]}" for k in sorted(g)))' 2>/dev/null || echo "?"; }
spread() { status_json | python3 -c '
import json,sys
c=[w.get("connections",0) for w in json.load(sys.stdin).get("workers",[]) if w.get("state")=="ready"]
print(f"{min(c)}..{max(c)} over {len(c)} workers" if c else "-")' 2>/dev/null || echo "-"; }
# running PID: alive and not a zombie
running() { [[ -n ${1:-} ]] && [[ -r /proc/$1/stat ]] && [[ $(awk '{ print $3 }' /proc/"$1"/stat 2>/dev/null) != Z ]]; }
workers_now() { cat /proc/"$C_MASTER"/task/*/children 2>/dev/null | xargs -n1 2>/dev/null || true; }

sleep 1
W0=$(workers_now)
read -r _ P0 _ <<<"$(mem_sum $W0)"
S0=$(sockstat_tcp mem)
SL0=$(meminfo_kb Slab)

# ----- establish ----------------------------------------------------------------------
CL=()
rate=$((CONNECT_RATE / PROCS))
((rate > 0)) || rate=1
for ((i = 0; i < PROCS; i++)); do
  c=$((N / PROCS + (i < N % PROCS ? 1 : 0)))
  port=$((BASE_PORT + i % PORTS))
  timeout --kill-after=300 $((HOLD_S + 30)) "$LOAD" --addr "127.0.0.1:$port" --mode idle --conns "$c" \
    --alive-check-ms "$ALIVE_CHECK_MS" --source-ips "$IPS" --connect-rate "$rate" --duration "$HOLD_S" --json \
    >"$WORK/idle-$i.json" 2>"$WORK/idle-$i.err" &
  CL+=($!)
  STARTED+=($!)
done
t0=$(now_ms)
est=0
while :; do
  est=$(conns_total)
  ((est >= N)) && break
  mem_ok || break
  any=0
  for p in "${CL[@]}"; do alive "$p" && any=1; done
  if ((!any)); then STOP_REASON="every client exited: $(head -n1 "$WORK/idle-0.err")"; break; fi
  sleep 1
done
ESTABLISH_S=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
log "established $est of $N in ${ESTABLISH_S}s (MemAvailable $(($(meminfo_kb MemAvailable) / 1024)) MiB)${STOP_REASON:+; stopped: $STOP_REASON}"

SAMPLE_PID=""
if [[ $SERVICE == echo && -z $STOP_REASON ]] && ((SAMPLE > 0)); then
  # round trips on a few connections for the whole hold: before, during and after the moves
  timeout --kill-after=300 $((HOLD_S + 30)) "$LOAD" --addr "127.0.0.1:$BASE_PORT" --mode echo --conns "$SAMPLE" \
    --rate 2 --source-ips 1 --duration "$HOLD_S" --json >"$WORK/sample.json" 2>"$WORK/sample.err" &
  SAMPLE_PID=$!
  STARTED+=($!)
fi

if [[ -n $STOP_REASON ]]; then
  # figures taken after the clients are gone would be meaningless
  log "stopped while establishing: $STOP_REASON (reached $est of $N)"
  corral_stop
  echo "held=$est lost=NA establish_s=$ESTABLISH_S user_bytes_per_conn=NA"
  exit 1
fi
sleep 3
W1=$(workers_now)
read -r _ P1 _ <<<"$(mem_sum $W1)"
S1=$(sockstat_tcp mem)
SL1=$(meminfo_kb Slab)
HELD_BEFORE=$(($(conns_total) - ${SAMPLE_PID:+SAMPLE}+0))
SPREAD=$(spread)
ST_MS=()
for _ in 1 2 3 4 5; do
  a=$(now_ms)
  timeout 30 "$CORRAL" status -c "$C_CONF" >/dev/null 2>&1 || true
  ST_MS+=($(($(now_ms) - a)))
done
ST_MED=$(printf '%s\n' "${ST_MS[@]}" | median)
c0=$(cpu_ticks "$C_MASTER" $W1)
sleep 5
c1=$(cpu_ticks "$C_MASTER" $W1)
IDLE_CPU=$(cpu_pct "$c0" "$c1" 5)
UB=$(awk -v a="$P0" -v b="$P1" -v n="$HELD_BEFORE" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "NA" }')
log "holding $HELD_BEFORE: workers $SPREAD; Pss $P0 -> $P1 kB ($UB B/conn); sockstat TCP mem $S0 -> $S1 pages; Slab $SL0 -> $SL1 kB; corral status median ${ST_MED} ms (${ST_MS[*]}); idle CPU ${IDLE_CPU}% of a core (master + workers)"

# ----- reload and upgrade while holding -----------------------------------------------
# move NAME CMD...: time the command, then how long until every held connection has
# left where it was: for a reload, until only the newest generation has workers; for an
# upgrade, until the old master (and so every one of its workers) is gone.
MOVE_MS=()
move() {
  local name=$1 a b out rc=0 old=$C_MASTER
  shift
  a=$(now_ms)
  out=$(timeout 300 "$@" 2>&1) || rc=$?
  b=$(now_ms)
  log "$name: rc=$rc in $((b - a)) ms: $(echo "$out" | tail -n1)"
  if [[ $name == upgrade ]]; then
    local new
    new=$(cat "$(dirname "$C_CONF")/corral.pid" 2>/dev/null || echo "")
    if [[ -n $new && $new != "$old" ]]; then
      C_MASTER=$new
      log "upgrade: master $old -> $new"
    fi
  fi
  local d=$((a + MOVE_WAIT_S * 1000)) g done=0 next_log=$((a + 5000))
  while (($(now_ms) < d)); do
    g=$(conns_by_gen)
    if [[ $name == reload ]]; then
      [[ $(wc -w <<<"$g") == 1 ]] && done=1
    else
      running "$old" || done=1
    fi
    ((done)) && break
    mem_ok || break
    if (($(now_ms) >= next_log)); then
      log "$name: +$((($(now_ms) - a) / 1000)) s: the current master's workers: $g"
      next_log=$((next_log + 5000))
    fi
    sleep 0.5
  done
  local took=$(($(now_ms) - a))
  if ((done)); then
    MOVE_MS+=("$name=${took}ms")
    log "$name: moved: $took ms after the command: $(conns_by_gen)"
  else
    MOVE_MS+=("$name=unfinished")
    log "$name: NOT finished $took ms after the command${STOP_REASON:+ ($STOP_REASON)}: $(conns_by_gen)"
  fi
}
HOG_PIDS=()
for ((i = 0; i < HOGS; i++)); do
  timeout $((2 * MOVE_WAIT_S + 60)) sh -c 'while :; do :; done' &
  HOG_PIDS+=($!)
  STARTED+=($!)
done
((HOGS == 0)) || log "$HOGS CPU hogs running beside corral for the moves (pids ${HOG_PIDS[*]})"
if [[ -z $STOP_REASON ]]; then
  move reload "$CORRAL" -s reload --no-wait -c "$C_CONF"
fi
if [[ -z $STOP_REASON ]] && mem_ok; then
  move upgrade "$CORRAL" -s upgrade --no-wait -c "$C_CONF"
fi
for p in "${HOG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
mem_ok || true
sleep 3
HELD_AFTER=0
for ((i = 0; i < PORTS; i++)); do HELD_AFTER=$((HELD_AFTER + $(estab_count $((BASE_PORT + i))))); done
log "move times (command to the last connection moved): ${MOVE_MS[*]:-none}"
log "after the moves: $HELD_AFTER established on the server ports (ss; every master and generation), the current master's workers: $(conns_by_gen); MemAvailable $(($(meminfo_kb MemAvailable) / 1024)) MiB"

# ----- clients leave ------------------------------------------------------------------
for p in "${CL[@]}" $SAMPLE_PID; do kill -TERM "$p" 2>/dev/null || true; done
t_stop=$(now_ms)
for p in "${CL[@]}" $SAMPLE_PID; do wait "$p" 2>/dev/null || true; done
log "clients stopped in $(($(now_ms) - t_stop)) ms"
# lost: held connections (client slots) closed, reset or silent at least once; each
# client counts a slot once however often it reconnects, so lost <= held.
EVENTS=0 CFAIL=0 OPEN=0 LOST=0
for f in "$WORK"/idle-*.json; do
  LOST=$((LOST + $(jget conns_lost "$f" 2>/dev/null || echo 0)))
  for k in reset_eof closed_idle mismatch timeouts; do
    EVENTS=$((EVENTS + $(jget "$k" "$f" 2>/dev/null || echo 0)))
  done
  CFAIL=$((CFAIL + $(jget connect_failed "$f" 2>/dev/null || echo 0)))
  OPEN=$((OPEN + $(jget conns_open_at_end "$f" 2>/dev/null || echo 0)))
done
SAMPLE_LINE="-"
if [[ -n $SAMPLE_PID && -s $WORK/sample.json ]]; then
  f=$WORK/sample.json
  SAMPLE_LINE="round_trips=$(jget round_trips "$f") failed=$(jget round_trips_failed "$f") reset_eof=$(jget reset_eof "$f") p99_us=$(jlat p99 "$f")"
fi
log "clients: open at end $OPEN, loss events $EVENTS (a reconnected connection can be lost again), connect failures (retried) $CFAIL; echo sample: $SAMPLE_LINE"
d=$(($(now_ms) + 60000))
while (($(conns_total) > 0 && $(now_ms) < d)); do sleep 1; done
sleep 2
W2=$(workers_now)
read -r _ P2 _ <<<"$(mem_sum $W2)"
log "after the clients left: workers' Pss $P2 kB over $(wc -w <<<"$W2") workers (idle baseline $P0 kB over $(wc -w <<<"$W0")); $(conns_by_gen)"
corral_stop
[[ -n $STOP_REASON ]] && log "stopped early: $STOP_REASON (reached $est of $N)"
echo "held=$HELD_BEFORE lost=$LOST establish_s=$ESTABLISH_S user_bytes_per_conn=$UB"
