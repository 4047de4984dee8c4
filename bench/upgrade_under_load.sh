#!/usr/bin/env bash
# upgrade_under_load.sh: a benchmark, not a test. It asks "what does a client feel while
# corral replaces its own binary, several times, under load?": corral (release build,
# 2 workers, echo service on a free loopback port, started from a copy of the binary in
# a scratch dir) carries persistent echo connections and a stream of short-lived churn
# connections, while the binary file is replaced (new copy renamed over it) and
# `corral -s upgrade` is sent UPGRADES times, evenly spread over the run. It prints each
# upgrade's time (wall and "ready in X ms"), and per load how many connections and round
# trips failed, then checks that every old master left and that nothing is left after
# `corral -s stop`.
#
# Persistent echo connections stay on the first master's workers for the whole run
# (echo streams are not idle-closable), so that master drains until the load ends;
# DRAIN_TIMEOUT defaults to longer than the run so that the run measures upgrades, not
# drain deadlines.
#
# Usage: bench/upgrade_under_load.sh [DURATION_S [UPGRADES]]   (defaults 20 and 5)
# Knobs (environment): ECHO_CONNS=100 ECHO_RATE=100 CHURN_CONNS=10
# CHURN_CONNECT_RATE=500 UPGRADE_TIMEOUT=10s DRAIN_TIMEOUT=(DURATION+60)s NO_BUILD=0
# KEEP=0 CARGO_TARGET_DIR. Uses target/release/corral-load when it exists, otherwise a
# python3 client (fewer connections, same report).
set -euo pipefail

DURATION=${1:-${DURATION:-20}}
UPGRADES=${2:-${UPGRADES:-5}}
ECHO_CONNS=${ECHO_CONNS:-100}
ECHO_RATE=${ECHO_RATE:-100}            # round trips/s per connection; 0 = flat out
CHURN_CONNS=${CHURN_CONNS:-10}
CHURN_CONNECT_RATE=${CHURN_CONNECT_RATE:-500}   # new connections/s; 0 = no cap
UPGRADE_TIMEOUT=${UPGRADE_TIMEOUT:-10s}
NO_BUILD=${NO_BUILD:-0}
KEEP=${KEEP:-0}

die() { echo "upgrade_under_load: $*" >&2; exit 1; }
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 4 && DURATION <= 600)) ||
  die "DURATION must be whole seconds in 4..600 (got '$DURATION')"
[[ $UPGRADES =~ ^[0-9]+$ ]] && ((UPGRADES >= 1 && UPGRADES <= 100)) ||
  die "UPGRADES must be in 1..100 (got '$UPGRADES')"
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-$((DURATION + 60))s}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BUILT=$TARGET_DIR/release/corral
LOAD=$TARGET_DIR/release/corral-load

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ----- cleanup: only what this script started, by pid ---------------------------------
WORK=$(mktemp -d /tmp/corral-upgrade-bench.XXXXXX)
BIN=$WORK/bin/corral          # the path the masters exec on upgrade
WRAPPER_PID="" ECHO_PID="" CHURN_PID=""
declare -A SEEN_PIDS=()   # every corral process seen (masters and workers)
declare -A MASTERS=()     # every master seen

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }
# One of our corral processes, still running (not a zombie, not a reused pid: its
# command line names our scratch dir).
corral_alive() {
  local p=$1 state
  [[ -r /proc/$p/stat ]] || return 1
  state=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null) || return 1
  [[ $state != Z ]] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$WORK"
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
    echo "upgrade_under_load: files kept in $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Record every master seen and its current children (workers of every generation).
note_master() {
  local m=$1 p
  [[ $m =~ ^[0-9]+$ ]] || return 0
  SEEN_PIDS[$m]=1
  MASTERS[$m]=1
}
note_workers() {
  local m p
  for m in "${!MASTERS[@]}"; do
    alive "$m" || continue
    for p in $(ps -o pid= --ppid "$m" 2>/dev/null || true); do
      SEEN_PIDS[$p]=1
    done
  done
}

# ----- build ------------------------------------------------------------------------
if [[ $NO_BUILD != 1 ]]; then
  echo "== cargo build --release"
  (cd "$ROOT" && timeout 1200 cargo build --release) || die "release build failed"
fi
[[ -x $BUILT ]] || die "missing $BUILT (build first)"
USE_LOAD=1
[[ -x $LOAD ]] || { USE_LOAD=0; command -v python3 >/dev/null || die "no $LOAD and no python3"; }

mkdir -p "$WORK/bin"
cp "$BUILT" "$BIN"

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
upgrade_timeout = "$UPGRADE_TIMEOUT"

[[listen]]
address = "127.0.0.1:$PORT"
service = "echo"
EOF

# ----- start corral -------------------------------------------------------------------
# The timeout wrapper bounds the first master's life even if this script is killed
# outright; later masters (own process groups) are bounded by the cleanup trap.
LIMIT=$((DURATION + 120))
timeout --signal=TERM --kill-after=10 "$LIMIT" "$BIN" -c "$CONFIG" >"$WORK/corral.log" 2>&1 &
WRAPPER_PID=$!
deadline=$(($(now_ms) + 10000))
until timeout 5 "$BIN" status -c "$CONFIG" >/dev/null 2>&1; do
  alive "$WRAPPER_PID" || { cat "$WORK/corral.log" >&2; die "corral exited at start"; }
  (($(now_ms) < deadline)) || die "corral not ready within 10 s"
  sleep 0.1
done
FIRST_MASTER=$(cat "$WORK/corral.pid")
[[ $FIRST_MASTER =~ ^[0-9]+$ ]] || die "bad pid file"
note_master "$FIRST_MASTER"
note_workers
echo "== corral master $FIRST_MASTER on 127.0.0.1:$PORT, 2 workers; ${DURATION}s of load, $UPGRADES upgrades"

# ----- start the loads ----------------------------------------------------------------
LOAD_LIMIT=$((DURATION + 30))
if ((USE_LOAD)); then
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
else
  echo "   (no $LOAD: using the python3 client, 20 persistent + 4 churn connections)"
  cat >"$WORK/load.py" <<'PY'
import json, socket, sys, threading, time
port, mode, conns, duration = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end = time.time() + duration
lock = threading.Lock()
st = dict(conns_opened=0, connect_failed=0, round_trips=0, round_trips_failed=0,
          reset_eof=0, mismatch=0, timeouts=0, closed_idle=0)
def bump(k):
    with lock: st[k] += 1
def conn():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.settimeout(5); bump("conns_opened"); return s
    except OSError:
        bump("connect_failed"); time.sleep(0.05); return None
def rt(s, msg):
    try:
        s.sendall(msg); got = b""
        while len(got) < len(msg):
            b = s.recv(len(msg) - len(got))
            if not b: bump("reset_eof"); bump("round_trips_failed"); return False
            got += b
        if got != msg: bump("mismatch"); bump("round_trips_failed"); return False
        bump("round_trips"); return True
    except socket.timeout:
        bump("timeouts"); bump("round_trips_failed"); return False
    except OSError:
        bump("reset_eof"); bump("round_trips_failed"); return False
def run(i):
    s, n = None, 0
    while time.time() < end:
        if s is None:
            s = conn()
            if s is None: continue
        n += 1
        ok = rt(s, b"conn %d rt %d\n" % (i, n))
        if mode == "churn" or not ok:
            s.close(); s = None
        time.sleep(0.01)
    if s: s.close()
ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
st["round_trips_per_s"] = st["round_trips"] / duration
print(json.dumps(st))
PY
  timeout --kill-after=5 "$LOAD_LIMIT" python3 "$WORK/load.py" "$PORT" echo 20 "$DURATION" \
    >"$WORK/echo.json" 2>"$WORK/echo.progress" &
  ECHO_PID=$!
  timeout --kill-after=5 "$LOAD_LIMIT" python3 "$WORK/load.py" "$PORT" churn 4 "$DURATION" \
    >"$WORK/churn.json" 2>"$WORK/churn.progress" &
  CHURN_PID=$!
fi
start=$(now_ms)

# ----- upgrade UPGRADES times, evenly spread ---------------------------------------------
: >"$WORK/upgrades.txt" # one line per upgrade: rc wall_ms ready_ms old_pid new_pid
INTERVAL_MS=$((DURATION * 1000 / (UPGRADES + 1)))
for k in $(seq "$UPGRADES"); do
  due=$((start + k * INTERVAL_MS))
  wait_ms=$((due - $(now_ms)))
  ((wait_ms > 0)) && sleep "$(awk -v m="$wait_ms" 'BEGIN { printf "%.3f", m / 1000 }')"
  old=$(cat "$WORK/corral.pid" 2>/dev/null || echo -)
  # A new version is deployed: write it next to the old one and rename it over.
  cp "$BUILT" "$BIN.new" && mv -f "$BIN.new" "$BIN"
  t0=$(now_ms)
  rc=0
  out=$(timeout 60 "$BIN" -s upgrade -c "$CONFIG" 2>&1) || rc=$?
  t1=$(now_ms)
  ready=$(sed -n 's/.*ready in \([0-9][0-9]*\) ms.*/\1/p' <<<"$out" | head -n1)
  new=$(sed -n 's/.*new master \([0-9][0-9]*\) is serving.*/\1/p' <<<"$out" | head -n1)
  [[ -n $new ]] && note_master "$new"
  # A failed upgrade's new master is named in the log only.
  for p in $(sed -n 's/.*new master started.*pid=\([0-9][0-9]*\).*/\1/p' "$WORK/corral.log"); do
    note_master "$p"
  done
  note_workers
  echo "$rc $((t1 - t0)) ${ready:--} $old ${new:--}" >>"$WORK/upgrades.txt"
  if ((rc == 0)); then
    echo "   upgrade $k: $old -> $new, ready in ${ready:-?} ms, $((t1 - t0)) ms end to end"
  else
    echo "   upgrade $k FAILED (rc $rc): $out" >&2
  fi
done

rc_echo=0 rc_churn=0
wait "$ECHO_PID" || rc_echo=$?
wait "$CHURN_PID" || rc_churn=$?
ECHO_PID="" CHURN_PID=""
note_workers

# ----- old masters leave once their connections are gone --------------------------------
CURRENT=$(cat "$WORK/corral.pid")
t_end=$(now_ms)
left_old=()
for _ in $(seq 300); do
  left_old=()
  for m in "${!MASTERS[@]}"; do
    [[ $m == "$CURRENT" ]] && continue
    corral_alive "$m" && left_old+=("$m")
  done
  ((${#left_old[@]} == 0)) && break
  sleep 0.1
done
old_gone_ms=$(($(now_ms) - t_end))

# ----- report ---------------------------------------------------------------------------
jget() { grep -o "\"$1\":[0-9.eE+-]*" "$2" | head -n1 | cut -d: -f2; }
jlat() { grep -o '"latency_us":{[^}]*}' "$2" | grep -o "\"$1\":[0-9.]*" | cut -d: -f2; }
median_max() { # reads numbers on stdin; prints "median max" (upper median)
  sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "- -"; else print v[int(NR / 2) + 1], v[NR] }'
}

n=$(wc -l <"$WORK/upgrades.txt")
ok=$(awk '$1 == 0' "$WORK/upgrades.txt" | wc -l)
read -r wall_med wall_max < <(awk '$1 == 0 { print $2 }' "$WORK/upgrades.txt" | median_max)
read -r ready_med ready_max < <(awk '$1 == 0 && $3 != "-" { print $3 }' "$WORK/upgrades.txt" | median_max)

echo
echo "upgrades:            $ok done, $((n - ok)) failed (over ${DURATION}s)"
echo "upgrade wall time:   median $wall_med ms, max $wall_max ms   (corral -s upgrade, end to end)"
echo "upgrade ready time:  median $ready_med ms, max $ready_max ms   (\"ready in X ms\" from corral)"
for load in echo churn; do
  f=$WORK/$load.json
  rcv=rc_$load
  if [[ ! -s $f ]]; then
    echo "$load load:           no result (exit ${!rcv}); see $WORK/$load.progress"
    continue
  fi
  opened=$(jget conns_opened "$f")
  cfail=$(jget connect_failed "$f")
  rt=$(jget round_trips "$f")
  rtfail=$(jget round_trips_failed "$f")
  printf '%-20s connections %s failed / %s total; round trips %s failed / %s total\n' \
    "$load load:" "$cfail" "$((opened + cfail))" "$rtfail" "$((rt + rtfail))"
  printf '%-20s reset/EOF %s, mismatch %s, timeouts %s; %s rt/s; p50 %s us p99 %s us max %s us\n' \
    "" "$(jget reset_eof "$f")" "$(jget mismatch "$f")" "$(jget timeouts "$f")" \
    "$(jget round_trips_per_s "$f" | cut -d. -f1)" \
    "$(jlat p50 "$f" || echo -)" "$(jlat p99 "$f" || echo -)" "$(jlat max "$f" || echo -)"
done
if ((${#left_old[@]} == 0)); then
  echo "old masters:         all $((${#MASTERS[@]} - 1)) gone ${old_gone_ms} ms after the load ended"
else
  echo "old masters:         still running 30 s after the load ended: ${left_old[*]}"
fi
warns=$(grep -c ' WARN ' "$WORK/corral.log" || true)
errs=$(grep -c ' ERROR ' "$WORK/corral.log" || true)
echo "corral log:          $warns warnings, $errs errors ($WORK/corral.log)"

# ----- stop and check that nothing is left ------------------------------------------------
note_workers
stop_rc=0
timeout 90 "$BIN" -s stop -c "$CONFIG" >/dev/null 2>&1 || stop_rc=$?
wait "$WRAPPER_PID" 2>/dev/null || true
WRAPPER_PID=""
left=()
for _ in $(seq 50); do
  left=()
  for p in "${!SEEN_PIDS[@]}"; do corral_alive "$p" && left+=("$p"); done
  ((${#left[@]} == 0)) && break
  sleep 0.1
done
if ((stop_rc != 0 || ${#left[@]} > 0 || ${#left_old[@]} > 0)); then
  KEEP=1
  die "corral -s stop returned $stop_rc; processes left: ${left[*]:-none}; old masters left: ${left_old[*]:-none}"
fi
echo "stopped:             corral -s stop ok; none of ${#SEEN_PIDS[@]} corral pids seen is left"
