#!/usr/bin/env bash
# reload_under_load.sh: a benchmark, not a test. It asks "what does a client feel while
# corral reloads over and over?": corral (release build, 2 workers, echo service on a
# free loopback port) carries persistent echo connections and a stream of short-lived
# churn connections from corral-load, while `corral -s reload` is sent every INTERVAL
# seconds. It prints reload latency and, per load, how many connections and round trips
# failed. It asserts nothing except that corral stops cleanly and leaves no process.
#
# Usage: bench/reload_under_load.sh [DURATION_S [INTERVAL_S]]   (defaults 20 and 1)
# Knobs (environment): ECHO_CONNS=200 ECHO_RATE=100 CHURN_CONNS=20
# CHURN_CONNECT_RATE=1000 DRAIN_TIMEOUT=30s MAX_OLD_GENERATIONS=2 NO_BUILD=0
# KEEP=0 CARGO_TARGET_DIR. See bench/README.md.
set -euo pipefail

DURATION=${1:-${DURATION:-20}}
INTERVAL=${2:-${INTERVAL:-1}}
ECHO_CONNS=${ECHO_CONNS:-200}
ECHO_RATE=${ECHO_RATE:-100}            # round trips/s per connection; 0 = flat out
CHURN_CONNS=${CHURN_CONNS:-20}
CHURN_CONNECT_RATE=${CHURN_CONNECT_RATE:-1000}   # new connections/s; 0 = no cap
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-30s}
MAX_OLD_GENERATIONS=${MAX_OLD_GENERATIONS:-2}
NO_BUILD=${NO_BUILD:-0}
KEEP=${KEEP:-0}

die() { echo "reload_under_load: $*" >&2; exit 1; }
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 2 && DURATION <= 600)) ||
  die "DURATION must be whole seconds in 2..600 (got '$DURATION')"
[[ $INTERVAL =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "INTERVAL must be seconds, e.g. 1 or 0.5"
INTERVAL_MS=$(awk -v i="$INTERVAL" 'BEGIN { printf "%d", i * 1000 }')
((INTERVAL_MS >= 100)) || die "INTERVAL must be at least 0.1 s"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CORRAL=$TARGET_DIR/release/corral
LOAD=$TARGET_DIR/release/corral-load

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ----- cleanup: only what this script started, by pid ---------------------------------
WORK=$(mktemp -d /tmp/corral-bench.XXXXXX)
WRAPPER_PID="" MASTER_PID="" ECHO_PID="" CHURN_PID=""
declare -A SEEN_PIDS=() # every corral process seen (master and workers), for the check

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }
# A corral process still running (not a zombie, not a stranger that reused the pid).
corral_alive() {
  local p=$1 state
  [[ -r /proc/$p/stat ]] || return 1
  state=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null) || return 1
  [[ $state != Z ]] && { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q corral
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "$ECHO_PID" "$CHURN_PID" "$WRAPPER_PID"; do
    alive "$p" && kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${!SEEN_PIDS[@]}"; do
    corral_alive "$p" && kill -TERM "$p" 2>/dev/null || true
  done
  # Give SIGTERM (corral's fast stop) a moment, then make sure.
  for _ in $(seq 50); do
    local any=0
    for p in "$ECHO_PID" "$CHURN_PID" "$WRAPPER_PID"; do alive "$p" && any=1; done
    for p in "${!SEEN_PIDS[@]}"; do corral_alive "$p" && any=1; done
    ((any)) || break
    sleep 0.1
  done
  for p in "$ECHO_PID" "$CHURN_PID" "$WRAPPER_PID"; do
    alive "$p" && kill -KILL "$p" 2>/dev/null || true
  done
  for p in "${!SEEN_PIDS[@]}"; do
    corral_alive "$p" && kill -KILL "$p" 2>/dev/null || true
  done
  if ((rc == 0)) && [[ $KEEP == 0 ]]; then
    rm -rf "$WORK"
  else
    echo "reload_under_load: files kept in $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Record the master's current children (workers of every live generation).
note_workers() {
  alive "$MASTER_PID" || return 0
  local p
  for p in $(ps -o pid= --ppid "$MASTER_PID" 2>/dev/null || true); do
    SEEN_PIDS[$p]=1
  done
}

# ----- build ------------------------------------------------------------------------
if [[ $NO_BUILD != 1 ]]; then
  echo "== cargo build --release"
  (cd "$ROOT" && timeout 1200 cargo build --release) || die "release build failed"
fi
[[ -x $CORRAL && -x $LOAD ]] || die "missing $CORRAL or $LOAD (build first)"

# ----- a free loopback port (below the ephemeral range, so no client port can take it) -
PORT=""
for _ in $(seq 200); do
  p=$((20000 + RANDOM % 12000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[[ -n $PORT ]] || die "no free loopback port found"

CONFIG=$WORK/corral.toml
cat >"$CONFIG" <<EOF
[master]
workers = 2
pid_file = "$WORK/corral.pid"
drain_timeout = "$DRAIN_TIMEOUT"
max_old_generations = $MAX_OLD_GENERATIONS

[[listen]]
address = "127.0.0.1:$PORT"
service = "echo"
EOF

# ----- start corral -------------------------------------------------------------------
# The timeout wrapper bounds corral's life even if this script is killed outright.
LIMIT=$((DURATION + 120))
timeout --signal=TERM --kill-after=10 "$LIMIT" "$CORRAL" -c "$CONFIG" >"$WORK/corral.log" 2>&1 &
WRAPPER_PID=$!
deadline=$(($(now_ms) + 10000))
until timeout 5 "$CORRAL" status -c "$CONFIG" >/dev/null 2>&1; do
  alive "$WRAPPER_PID" || { cat "$WORK/corral.log" >&2; die "corral exited at start"; }
  (($(now_ms) < deadline)) || die "corral not ready within 10 s"
  sleep 0.1
done
MASTER_PID=$(cat "$WORK/corral.pid")
[[ $MASTER_PID =~ ^[0-9]+$ ]] || die "bad pid file"
SEEN_PIDS[$MASTER_PID]=1
note_workers
echo "== corral master $MASTER_PID on 127.0.0.1:$PORT, 2 workers; ${DURATION}s of load, reload every ${INTERVAL}s"

# ----- start the loads ----------------------------------------------------------------
LOAD_LIMIT=$((DURATION + 30))
churn_cap=()
((CHURN_CONNECT_RATE > 0)) && churn_cap=(--connect-rate "$CHURN_CONNECT_RATE")
timeout --kill-after=5 "$LOAD_LIMIT" "$LOAD" --addr "127.0.0.1:$PORT" --mode echo \
  --conns "$ECHO_CONNS" --rate "$ECHO_RATE" --duration "$DURATION" --json --progress \
  >"$WORK/echo.json" 2>"$WORK/echo.progress" &
ECHO_PID=$!
timeout --kill-after=5 "$LOAD_LIMIT" "$LOAD" --addr "127.0.0.1:$PORT" --mode churn \
  --conns "$CHURN_CONNS" "${churn_cap[@]}" --duration "$DURATION" --json --progress \
  >"$WORK/churn.json" 2>"$WORK/churn.progress" &
CHURN_PID=$!
start=$(now_ms)

# ----- reload every INTERVAL ------------------------------------------------------------
: >"$WORK/reloads.txt" # one line per reload: rc wall_ms ready_ms
k=0
while :; do
  k=$((k + 1))
  due=$((start + k * INTERVAL_MS))
  # Leave the last second to the loads alone, so each reload is fully inside the run.
  ((due + 1000 <= start + DURATION * 1000)) || break
  wait_ms=$((due - $(now_ms)))
  ((wait_ms > 0)) && sleep "$(awk -v m="$wait_ms" 'BEGIN { printf "%.3f", m / 1000 }')"
  t0=$(now_ms)
  rc=0
  out=$(timeout 60 "$CORRAL" -s reload --no-wait -c "$CONFIG" 2>&1) || rc=$?
  t1=$(now_ms)
  ready=$(sed -n 's/.*ready in \([0-9][0-9]*\) ms.*/\1/p' <<<"$out" | head -n1)
  echo "$rc $((t1 - t0)) ${ready:--}" >>"$WORK/reloads.txt"
  ((rc == 0)) || echo "   reload $k failed (rc $rc): $out" >&2
  note_workers
done

rc_echo=0 rc_churn=0
wait "$ECHO_PID" || rc_echo=$?
wait "$CHURN_PID" || rc_churn=$?
ECHO_PID="" CHURN_PID=""
note_workers

# ----- report ---------------------------------------------------------------------------
# Single-line JSON from corral-load; every key read here is unique in it.
jget() { grep -o "\"$1\":[0-9.eE+-]*" "$2" | head -n1 | cut -d: -f2; }
# Round-trip latency fields (connect_latency_us has keys of the same names).
jlat() { grep -o '"latency_us":{[^}]*}' "$2" | grep -o "\"$1\":[0-9.]*" | cut -d: -f2; }
median_max() { # reads numbers on stdin; prints "median max" (upper median)
  sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "- -"; else print v[int(NR / 2) + 1], v[NR] }'
}

reloads=$(wc -l <"$WORK/reloads.txt")
ok=$(awk '$1 == 0' "$WORK/reloads.txt" | wc -l)
read -r wall_med wall_max < <(awk '$1 == 0 { print $2 }' "$WORK/reloads.txt" | median_max)
read -r ready_med ready_max < <(awk '$1 == 0 && $3 != "-" { print $3 }' "$WORK/reloads.txt" | median_max)

echo
echo "reloads:             $ok done, $((reloads - ok)) failed (every ${INTERVAL}s over ${DURATION}s)"
echo "reload wall time:    median $wall_med ms, max $wall_max ms   (corral -s reload, end to end)"
echo "reload ready time:   median $ready_med ms, max $ready_max ms   (\"ready in X ms\" from corral)"
for load in echo churn; do
  f=$WORK/$load.json
  rcv=rc_$load
  if [[ ! -s $f ]]; then
    echo "$load load:           no result (corral-load exit ${!rcv}); see $WORK/$load.progress"
    continue
  fi
  opened=$(jget conns_opened "$f")
  cfail=$(jget connect_failed "$f")
  rt=$(jget round_trips "$f")
  rtfail=$(jget round_trips_failed "$f")
  printf '%-20s connections %s failed / %s total; round trips %s failed / %s total\n' \
    "$load load:" "$cfail" "$((opened + cfail))" "$rtfail" "$((rt + rtfail))"
  printf '%-20s reset/EOF %s, mismatch %s, timeouts %s, closed idle %s; %s rt/s; p50 %s us p99 %s us p999 %s us max %s us\n' \
    "" "$(jget reset_eof "$f")" "$(jget mismatch "$f")" "$(jget timeouts "$f")" \
    "$(jget closed_idle "$f")" "$(jget round_trips_per_s "$f" | cut -d. -f1)" \
    "$(jlat p50 "$f")" "$(jlat p99 "$f")" "$(jlat p999 "$f")" "$(jlat max "$f")"
done
warns=$(grep -c ' WARN ' "$WORK/corral.log" || true)
errs=$(grep -c ' ERROR ' "$WORK/corral.log" || true)
echo "corral log:          $warns warnings, $errs errors ($WORK/corral.log)"

# ----- stop and check that nothing is left ------------------------------------------------
note_workers
stop_rc=0
timeout 90 "$CORRAL" -s stop -c "$CONFIG" >/dev/null 2>&1 || stop_rc=$?
wait "$WRAPPER_PID" 2>/dev/null || true
WRAPPER_PID=""
left=()
for _ in $(seq 50); do
  left=()
  for p in "${!SEEN_PIDS[@]}"; do corral_alive "$p" && left+=("$p"); done
  ((${#left[@]} == 0)) && break
  sleep 0.1
done
if ((stop_rc != 0 || ${#left[@]} > 0)); then
  KEEP=1
  die "corral -s stop returned $stop_rc; processes left: ${left[*]:-none}"
fi
echo "stopped:             corral -s stop ok; none of ${#SEEN_PIDS[@]} corral pids seen is left"
