#!/usr/bin/env bash
# kernel_moves.sh: the kernel's own limit for moving connections on this box, and
# corral's move rate as a ratio of it (issue 26). A benchmark, not a test.
#
#   kernel: examples/kernel_moves.rs (RUNS runs, the median of each figure): KCONNS
#           loopback TCP sockets passed back and forth between two processes with
#           SCM_RIGHTS, 64 fds and 128 bytes per fd in one seqpacket message, as corral
#           batches them: `scm` (sendmsg + close / recvmsg), `move` (plus epoll_ctl DEL
#           on the sender and ADD on the receiver: a direct worker-to-worker move),
#           `relay` (through a middle process: the master's part before issue 26);
#           and epoll_ctl ADD / DEL per fd alone.
#   corral: N idle echo connections (corral-load --mode idle) on WORKERS reuseport
#           workers, one `corral -s reload`, and the master's own figure for the move:
#           "generation 1 gone after X ms" (from the drain's start to its last worker's
#           exit), so rate = N / X.
#
# Usage: bench/kernel_moves.sh            Knobs: N=30000 WORKERS=3 KCONNS=8000 ROUNDS=10
#        RUNS=3 NO_BUILD=1 KEEP=1 SKIP_CORRAL=1 (kernel figures only)
# Last line: kernel_move_fds_per_s=<K> corral_fds_per_s=<C> ratio=<C/K> (and the rest)
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

N=${N:-30000}
WORKERS=${WORKERS:-3}
KCONNS=${KCONNS:-8000}
ROUNDS=${ROUNDS:-10}
RUNS=${RUNS:-3}
KM=$TARGET_DIR/release/examples/kernel_moves

if [[ ${NO_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && timeout 1200 cargo build --release --bins --example kernel_moves >&2) || die "release build failed"
fi
[[ -x $KM ]] || die "missing $KM (cargo build --release --example kernel_moves)"

# ----- the kernel's limit -------------------------------------------------------------
for ((r = 0; r < RUNS; r++)); do
  timeout 300 "$KM" --conns "$KCONNS" --rounds "$ROUNDS" | tee -a "$WORK/kernel.txt" >&2
done
# med KEY: the median of KEY over the runs
med() { grep -o "$1=[0-9]*" "$WORK/kernel.txt" | cut -d= -f2 | median; }
K_SCM=$(med scm_fds_per_s)
K_MOVE=$(med move_fds_per_s)
K_RELAY=$(med relay_fds_per_s)
K_ADD=$(med epoll_add_ns)
K_DEL=$(med epoll_del_ns)
log "kernel (median of $RUNS): scm $K_SCM fds/s, move (with epoll) $K_MOVE fds/s, relay $K_RELAY fds/s, epoll_ctl ADD $K_ADD ns, DEL $K_DEL ns"

if [[ ${SKIP_CORRAL:-0} == 1 ]]; then
  echo "kernel_scm_fds_per_s=$K_SCM kernel_move_fds_per_s=$K_MOVE kernel_relay_fds_per_s=$K_RELAY epoll_add_ns=$K_ADD epoll_del_ns=$K_DEL"
  exit 0
fi

# ----- corral's move rate -------------------------------------------------------------
[[ -x $CORRAL && -x $LOAD ]] || die "missing $CORRAL or $LOAD (build first)"
PORT=$(free_port)
corral_start moves 600 <<EOF
[master]
workers = $WORKERS
drain_timeout = "5m"
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
EOF
PROCS=$(((N + 14999) / 15000))
for ((i = 0; i < PROCS; i++)); do
  c=$((N / PROCS + (i < N % PROCS ? 1 : 0)))
  timeout --kill-after=30 400 "$LOAD" --addr "127.0.0.1:$PORT" --mode idle --conns "$c" \
    --alive-check-ms 10000 --source-ips 2 --connect-rate 10000 --duration 300 --json \
    >"$WORK/idle-$i.json" 2>"$WORK/idle-$i.err" &
  STARTED+=($!)
done
conns() { timeout 30 "$CORRAL" status --json -c "$C_CONF" 2>/dev/null | python3 -c 'import json,sys; print(sum(w.get("connections",0) for w in json.load(sys.stdin).get("workers",[])))' 2>/dev/null || echo 0; }
d=$(($(now_ms) + 120000))
until (($(conns) >= N)); do
  (($(now_ms) < d)) || die "only $(conns) of $N established in 120 s"
  sleep 0.5
done
sleep 2
log "holding $(conns) connections; reloading"
LOGF=$WORK/corral-moves/corral.log
timeout 60 "$CORRAL" -s reload --no-wait -c "$C_CONF" >/dev/null
d=$(($(now_ms) + 300000))
until grep -q "generation 1 gone after" "$LOGF"; do
  (($(now_ms) < d)) || die "generation 1 not gone in 300 s"
  sleep 0.2
done
LINE=$(grep -o "generation 1 gone after [0-9]* ms: moved [0-9]*, kept [0-9]*, closed [0-9]*" "$LOGF" | head -n1)
log "corral: $LINE"
MS=$(sed -E 's/.* after ([0-9]+) ms.*/\1/' <<<"$LINE")
MOVED=$(sed -E 's/.*moved ([0-9]+),.*/\1/' <<<"$LINE")
corral_stop
C_RATE=$(awk -v n="$MOVED" -v ms="$MS" 'BEGIN { printf "%.0f", n * 1000 / (ms > 0 ? ms : 1) }')
RATIO=$(awk -v c="$C_RATE" -v k="$K_MOVE" 'BEGIN { printf "%.2f", c / k }')
echo "kernel_move_fds_per_s=$K_MOVE corral_fds_per_s=$C_RATE ratio=$RATIO corral_moved=$MOVED corral_ms=$MS kernel_scm_fds_per_s=$K_SCM kernel_relay_fds_per_s=$K_RELAY epoll_add_ns=$K_ADD epoll_del_ns=$K_DEL"
