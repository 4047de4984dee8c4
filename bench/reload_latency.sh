#!/usr/bin/env bash
# reload_latency.sh: SIGHUP -> new generation Ready (4 workers, goal <= 50 ms) and
# SIGKILL a worker -> its slot accepting again (goal <= 10 ms), corral vs nginx in the
# same run; see reload_latency.py for exactly what each figure measures.
# usage: bench/reload_latency.sh [ROUNDS=10]     Knobs: NO_BUILD=1 BENCH_DIR KEEP=1
#        RT=1 (servers under SCHED_FIFO: their own latency, not a loaded box's run queue)
# needs: python3, nginx.
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"
ROUNDS=${1:-10}
build_corral
[[ -x $NGINX_BIN ]] || die "needs nginx ($NGINX_BIN)"
timeout $((ROUNDS * 30 + 120)) python3 "$ROOT/bench/reload_latency.py" "$CORRAL" "$WORK" "$ROUNDS"
