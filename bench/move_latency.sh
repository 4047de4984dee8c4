#!/usr/bin/env bash
# move_latency.sh: what active clients feel while idle connections move (issue 26).
# A benchmark, not a test.
#
#   corral: echo, `accept = "reuseport"`, WORKERS workers. N idle connections
#           (corral-load --mode idle, 15k per process) are moved by one `corral -s MOVE`
#           (reload or upgrade) while ACTIVE echo clients do RATE round trips/s each
#           (corral-load --progress: one line per second with that second's p99).
#   measured: the move's duration (the master's "generation 1 gone after X ms" for a
#           reload; for an upgrade, until the old master exits), the active clients'
#           worst per-second p99 and p999 from the reload on, their max, and round
#           trips failed (corral-load's 5 s timeout); idle connections lost.
#
# Usage: bench/move_latency.sh    Knobs: N=60000 WORKERS=4 ACTIVE=1000 RATE=10 MOVE=reload
#        NO_BUILD=1 KEEP=1
# Last line: move=<M> n=<N> move_ms=<ms> rt_p99_worst_ms= rt_p999_worst_ms= rt_max_ms=
#            rt_failed= idle_lost=
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

N=${N:-60000}
WORKERS=${WORKERS:-4}
ACTIVE=${ACTIVE:-1000}
RATE=${RATE:-10}
MOVE=${MOVE:-reload}
[[ $MOVE == reload || $MOVE == upgrade ]] || die "MOVE=$MOVE: reload or upgrade"

build_corral
PORT=$(free_port)
corral_start movelat 600 <<EOF2
[master]
workers = $WORKERS
drain_timeout = "5m"
upgrade_timeout = "60s"
[worker]
max_connections = 19000
idle_timeout = "30m"
[log]
level = "info"
[[listen]]
address = "127.0.0.1:$PORT"
service = "echo"
accept = "reuseport"
backlog = 4096
EOF2
LOGF=$WORK/corral-movelat/corral.log
PROCS=$(((N + 14999) / 15000))
IPS=$(((N + 19999) / 20000))
IDLE=()
for ((i = 0; i < PROCS; i++)); do
  c=$((N / PROCS + (i < N % PROCS ? 1 : 0)))
  timeout --kill-after=30 300 "$LOAD" --addr "127.0.0.1:$PORT" --mode idle --conns "$c" \
    --alive-check-ms 10000 --source-ips "$IPS" --connect-rate 10000 --duration 200 --json \
    >"$WORK/idle-$i.json" 2>"$WORK/idle-$i.err" &
  IDLE+=($!)
  STARTED+=($!)
done
conns() { timeout 30 "$CORRAL" status --json -c "$C_CONF" 2>/dev/null | python3 -c 'import json,sys; print(sum(w.get("connections",0) for w in json.load(sys.stdin).get("workers",[])))' 2>/dev/null || echo 0; }
d=$(($(now_ms) + 120000))
until (($(conns) >= N)); do
  (($(now_ms) < d)) || die "only $(conns) of $N established in 120 s"
  sleep 0.5
done
log "holding $(conns) idle; starting $ACTIVE active clients"
timeout --kill-after=30 120 "$LOAD" --addr "127.0.0.1:$PORT" --mode echo --conns "$ACTIVE" \
  --rate "$RATE" --source-ips 1 --duration 25 --threads 2 --progress --json \
  >"$WORK/active.json" 2>"$WORK/active.err" &
A_PID=$!
STARTED+=($!)
sleep 5
T_MOVE_S=$(( $(grep -c '^\[' "$WORK/active.err" || true) ))
OLD=$C_MASTER
a=$(now_ms)
timeout 60 "$CORRAL" -s "$MOVE" --no-wait -c "$C_CONF" >/dev/null
d=$((a + 120000))
if [[ $MOVE == reload ]]; then
  until grep -q "generation 1 gone after" "$LOGF"; do
    (($(now_ms) < d)) || die "generation 1 not gone in 120 s"
    sleep 0.05
  done
  MOVE_MS=$(grep -o "generation 1 gone after [0-9]* ms" "$LOGF" | head -n1 | grep -o "[0-9]* ms" | cut -d' ' -f1)
else
  while kill -0 "$OLD" 2>/dev/null; do
    (($(now_ms) < d)) || die "old master not gone in 120 s"
    sleep 0.05
  done
  MOVE_MS=$(($(now_ms) - a))
  C_MASTER=$(cat "$(dirname "$C_CONF")/corral.pid")
fi
log "$MOVE: moved in $MOVE_MS ms"
wait "$A_PID" || true
# per-second lines from the move on: "[  6s] ... p99 XXXus p999 YYYus |"
WORST=$(tail -n +"$((T_MOVE_S + 1))" "$WORK/active.err" | grep '^\[' | sed -E 's/.* p99 ([0-9]+)us p999 ([0-9]+)us.*/\1 \2/' |
  awk '{ if ($1 > a) a = $1; if ($2 > b) b = $2 } END { printf "%.1f %.1f", a / 1000, b / 1000 }')
read -r P99 P999 <<<"$WORST"
RTMAX=$(awk -v us="$(jlat max "$WORK/active.json")" 'BEGIN { printf "%.1f", us / 1000 }')
RTFAIL=$(jget round_trips_failed "$WORK/active.json")
LOST=0
for p in "${IDLE[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${IDLE[@]}"; do wait "$p" 2>/dev/null || true; done
for f in "$WORK"/idle-*.json; do [[ -s $f ]] && LOST=$((LOST + $(jget conns_lost "$f" 2>/dev/null || echo 0))); done
corral_stop
echo "move=$MOVE n=$N move_ms=$MOVE_MS rt_p99_worst_ms=$P99 rt_p999_worst_ms=$P999 rt_max_ms=$RTMAX rt_failed=$RTFAIL idle_lost=$LOST"
