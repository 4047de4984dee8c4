#!/usr/bin/env bash
# push.sh: fan-out of the push example (examples/push.rs) to N subscribers of one topic
# across the workers, on loopback. A benchmark, not a test.
#
#   corral: the push example, ceil(N / 16000) workers (at least 2; RLIMIT_NOFILE's hard
#           limit is 20000 per process), subscribers on one reuseport listener, the
#           HTTP publish listener beside it.
#   clients: ceil(N / 16000) `push-load` processes (bench/push_load.rs), each from its
#           own source address 127.0.0.x, all subscribed to one topic.
#   measured: (1) one 100-byte message to all N: delay until each client has it
#           (p50/p99/max over clients); (2) RATE messages/s for SUSTAIN_S s: deliveries
#           per second and their delay p50/p99/max; (3) a stream at MOVE_RATE/s through
#           `-s reload` then `-s upgrade`: lost, duplicated, disconnected (all must be 0);
#           (4) publish cost: workers' CPU per publish with 1, 2 and WORKERS workers and
#           no subscriber (COST_MSGS publishes as fast as one keep-alive connection goes).
# Delays are from the publisher's clock reading (in the message) to the client's read,
# both CLOCK_REALTIME on this box; they include the publisher's HTTP request.
#
# Usage: bench/push.sh [N]      Knobs: RATE=5 SUSTAIN_S=10 MOVE_RATE=2 COST_MSGS=5000
#        NO_BUILD=1 DEADLINE_S=600 CONNECT_RATE=20000 KEEP=1 UPGRADE=0 (only the reload in (3))
#        GRACE_S=20 (how long clients wait for what they miss after the last publish)
#        WORKERS=K (instead of ceil(N / 16000)) LOG_LEVEL=warn PER=16000 (subscribers per
#        client process and source address: fewer make the clients' connect() faster,
#        whose source-port search is linear in the ports already used)
# Every process runs under `timeout`; the EXIT trap stops by pid all it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CORRAL_BIN=$TARGET_DIR/release/examples/push
. "$(dirname "$0")/peer_lib.sh"
# After `-s upgrade` the master is not the process peer_lib started: stop whichever
# master the config names, then what peer_lib knows of.
push_cleanup() {
  [[ -n $C_CONF ]] && timeout 60 "$CORRAL" -s stop -c "$C_CONF" >/dev/null 2>&1
  peer_cleanup
}
trap push_cleanup EXIT

N=${1:-100000}
RATE=${RATE:-5}
SUSTAIN_S=${SUSTAIN_S:-10}
MOVE_RATE=${MOVE_RATE:-2}
COST_MSGS=${COST_MSGS:-5000}
DEADLINE_S=${DEADLINE_S:-600}
CONNECT_RATE=${CONNECT_RATE:-20000}
PER=${PER:-16000}
PUSH_LOAD=$TARGET_DIR/release/examples/push-load
PUB="python3 $ROOT/bench/push_pub.py"
T_END=$(($(now_ms) + DEADLINE_S * 1000))

if [[ ${NO_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && nice -n 10 cargo build --release --example push --example push-load) >&2
fi
[[ -x $CORRAL_BIN && -x $PUSH_LOAD ]] || die "build the push example and push-load first"

PROCS=$(((N + PER - 1) / PER))
WORKERS=${WORKERS:-$PROCS}
((WORKERS >= 2)) || WORKERS=2
SUB_PORT=$(free_port)
PUB_PORT=$(free_port)

config() { # workers
  cat <<CONF
[master]
workers = $1
drain_timeout = "120s"
upgrade_timeout = "120s"
[worker]
max_connections = 19000
idle_timeout = "30m"
[flow]
write_high_water = "16KiB"
write_low_water = "4KiB"
[log]
level = "${LOG_LEVEL:-warn}"
[[listen]]
address = "127.0.0.1:$SUB_PORT"
service = "push"
accept = "reuseport"
backlog = 4096
[[listen]]
address = "127.0.0.1:$PUB_PORT"
service = "push-publish"
CONF
}

# Percentiles of merged sparse histograms (100 µs buckets) from the clients' JSON.
summary() { # key files...
  python3 - "$@" <<'PY'
import json, sys
key, files = sys.argv[1], sys.argv[2:]
h, tot = {}, {"conns": 0, "subscribed": 0, "closed": 0, "dup": 0, "lost": 0, "reordered": 0, "deliveries": 0}
for f in files:
    j = json.load(open(f))
    for k in tot: tot[k] += j.get(k, 0)
    for b, c in j[key]: h[b] = h.get(b, 0) + c
n = sum(h.values())
def pct(p):
    if not n: return "NA"
    want, acc = p * n, 0
    for b in sorted(h):
        acc += h[b]
        if acc >= want: return f"{(b + 1) / 10:.1f}"
ended = {}
for f in files:
    e = json.load(open(f)).get("ended", "?")
    ended[e] = ended.get(e, 0) + 1
print(f"n={n} p50_ms={pct(0.5)} p99_ms={pct(0.99)} max_ms={pct(1.0)} " + " ".join(f"{k}={v}" for k, v in tot.items()) + " clients_ended=" + ",".join(f"{k.replace(' ', '_')}:{v}" for k, v in ended.items()))
PY
}

# ----- (4) publish cost first (no subscriber: cost per worker, not per subscriber) -------
COST=""
for w in 1 2 $WORKERS; do
  corral_start "cost$w" 120 < <(config "$w")
  sleep 1
  ws=$(corral_workers | xargs)
  c0=$(cpu_ticks $ws)
  t0=$(now_ms)
  out=$(timeout 120 $PUB "127.0.0.1:$PUB_PORT" nobody 1 "$COST_MSGS" 0)
  t1=$(now_ms)
  sleep 0.5
  c1=$(cpu_ticks $ws)
  per=$(awk -v a="$c0" -v b="$c1" -v n="$COST_MSGS" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) / hz / n * 1e6 }')
  rate=$(awk -v n="$COST_MSGS" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (ms / 1000) }')
  log "publish cost, $w worker(s): ${per} us of worker CPU per publish, $rate publishes/s on one connection ($out)"
  COST+="workers=$w cpu_us_per_publish=$per publishes_per_s=$rate; "
  corral_stop
  C_WRAPPER=""
done

# ----- subscribers ----------------------------------------------------------------------
corral_start push $DEADLINE_S < <(config "$WORKERS")
CL=()
for ((i = 0; i < PROCS; i++)); do
  c=$((N / PROCS + (i < N % PROCS ? 1 : 0)))
  timeout --kill-after=30 $((DEADLINE_S - 30)) "$PUSH_LOAD" --addr "127.0.0.1:$SUB_PORT" \
    --source "127.0.0.$((10 + i))" --conns "$c" --topic feed --connect-rate $((CONNECT_RATE / PROCS + 1)) \
    --deadline $((DEADLINE_S - 40)) --grace "${GRACE_S:-20}" --ready-file "$WORK/ready-$i" --stop-file "$WORK/stop" \
    --window "2:$((1 + RATE * SUSTAIN_S))" >"$WORK/load-$i.json" 2>"$WORK/load-$i.err" &
  CL+=($!)
  STARTED+=($!)
done
t0=$(now_ms)
until (($(ls "$WORK"/ready-* 2>/dev/null | wc -l) == PROCS)); do
  (($(now_ms) < T_END - 120000)) || die "subscribers not all in place: $(cat "$WORK"/ready-* 2>/dev/null | xargs)"
  for p in "${CL[@]}"; do alive "$p" || die "a client exited: $(cat "$WORK"/load-*.err)"; done
  sleep 0.5
done
log "$N subscribers in place after $(($(now_ms) - t0)) ms over $WORKERS workers"

# (1) one message to all
timeout 60 $PUB "127.0.0.1:$PUB_PORT" feed 1 1 0 >/dev/null
sleep 2
# (2) sustained
ws=$(corral_workers | xargs)
c0=$(cpu_ticks $ws)
s0=$(now_ms)
timeout $((SUSTAIN_S + 60)) $PUB "127.0.0.1:$PUB_PORT" feed 2 $((RATE * SUSTAIN_S)) "$RATE" >"$WORK/sustain.json"
c1=$(cpu_ticks $ws)
s1=$(now_ms)
# The moves start once the sustained phase's deliveries are written: a reload behind a
# backlog measures the backlog (a subscriber leaves only once its old worker wrote it
# what it holds), not the move. Quiet = the workers used under 10 % of a core for 1 s.
q0=$(now_ms)
while (($(now_ms) - q0 < 300000)); do
  a=$(cpu_ticks $ws)
  sleep 1
  b=$(cpu_ticks $ws)
  ((b - a < CLK_TCK / 10)) && break
done
log "workers quiet $(($(now_ms) - s1)) ms after the sustained phase"
# (3) through a reload and an upgrade
FIRST=$((2 + RATE * SUSTAIN_S))
# 20 s of stream (at least 4 messages), MOVE_RATE may be fractional (0.2: one in 5 s).
MOVE_N=$(awk -v r="$MOVE_RATE" 'BEGIN { n = int(r * 20 + 0.5); print (n < 4 ? 4 : n) }')
timeout 120 $PUB "127.0.0.1:$PUB_PORT" feed "$FIRST" "$MOVE_N" "$MOVE_RATE" >"$WORK/moves.json" &
PUBP=$!
STARTED+=($!)
sleep 3
r0=$(now_ms)
timeout 180 "$CORRAL" -s reload -c "$C_CONF" >&2 || log "reload failed"
log "reload: $(($(now_ms) - r0)) ms until the move was over (the command follows it)"
sleep 3
if [[ ${UPGRADE:-1} == 1 ]]; then
  u0=$(now_ms)
  timeout 180 "$CORRAL" -s upgrade -c "$C_CONF" >&2 || log "upgrade failed"
  log "upgrade: $(($(now_ms) - u0)) ms until the move was over (the command follows it)"
fi
wait "$PUBP" || log "the publisher failed: $(cat "$WORK/moves.json")"
LAST=$((FIRST + MOVE_N - 1))
echo "$LAST" >"$WORK/stop"
for p in "${CL[@]}"; do wait "$p" || true; done
PUSH_COUNTS=$(timeout 10 "$CORRAL" status -c "$C_CONF" 2>/dev/null | grep '^push:' || echo "push: no counts")
log "corral's counters (live workers of the last generation): $PUSH_COUNTS"

ONE=$(summary first "$WORK"/load-*.json)
SUS=$(summary window "$WORK"/load-*.json)
ALL=$(summary all "$WORK"/load-*.json)
sus_s=$(awk -v ms=$((s1 - s0)) 'BEGIN { printf "%.2f", ms / 1000 }')
sus_cpu=$(awk -v a="$c0" -v b="$c1" -v s="$sus_s" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (b - a) / hz / s * 100 }')
sus_us=$(awk -v a="$c0" -v b="$c1" -v n=$((RATE * SUSTAIN_S * N)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz / n * 1e6 }')
log "(1) one message to $N subscribers: $ONE"
log "(2) $RATE msg/s for ${SUSTAIN_S}s = $((RATE * N)) deliveries/s offered: $SUS; published over ${sus_s}s; workers' CPU ${sus_cpu}% of one core, ${sus_us} us per delivery"
log "(3) stream through reload + upgrade (all messages): $ALL"
log "(4) publish cost: $COST"
echo "one: $ONE"
echo "sustained rate=$RATE offered_deliveries_per_s=$((RATE * N)) publish_s=$sus_s workers_cpu_pct=$sus_cpu cpu_us_per_delivery=$sus_us: $SUS"
echo "all (incl. reload+upgrade): $ALL"
echo "cost: $COST"
echo "$PUSH_COUNTS"
