#!/usr/bin/env bash
# conn_cycle_memory.sh: does a corral worker's memory come back, or grow, over repeated
# connect/close cycles and connection churn? (corral alone; no peer, no ratio.)
#
# One worker, echo service. Prints the worker's Pss (smaps_rollup) after: CYCLES cycles of
# CONNS idle connections opened then closed; CHURN bursts of 10 s of corral-load --mode
# churn (50 connections, one round trip each, reconnect); 3 bursts of 10 s of echo (1000
# connections, 4 KiB messages). A figure that climbs with every cycle or burst is memory
# held per closed connection; a flat one is fine. IDLE_TIMEOUT matters: corral before
# c478d05 kept each closed connection's idle timer (~40 B) until it expired.
#
# Usage: bench/conn_cycle_memory.sh
# Knobs: CONNS=10000 CYCLES=5 CHURN=3 IDLE_TIMEOUT=10m NO_BUILD=1 KEEP=1
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"
CONNS=${CONNS:-10000}
CYCLES=${CYCLES:-5}
CHURN=${CHURN:-3}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-10m}
build_corral
port=$(free_port)
corral_start cycles 900 <<EOT
[master]
workers = 1
[worker]
max_connections = 19000
idle_timeout = "$IDLE_TIMEOUT"
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$port"
service = "echo"
backlog = 4096
EOT
w=$(corral_workers)
pss() { mem_sum $w | cut -d' ' -f2; }
echo "start: worker pss $(pss) kB (idle_timeout $IDLE_TIMEOUT)"
for ((i = 1; i <= CYCLES; i++)); do
  timeout --kill-after=5 100 "$LOAD" --addr "127.0.0.1:$port" --mode idle --conns "$CONNS" \
    --source-ips 2 --duration 60 --json >"$WORK/idle$i.json" 2>/dev/null &
  c=$!
  STARTED+=("$c")
  deadline=$(($(now_ms) + 60000))
  until (($(estab_count "$port") >= CONNS)); do
    (($(now_ms) < deadline)) || die "only $(estab_count "$port") of $CONNS connections after 60 s"
    sleep 0.3
  done
  held=$(pss)
  kill -TERM "$c"
  wait "$c" || true
  deadline=$(($(now_ms) + 30000))
  while (($(estab_count "$port") > 0 && $(now_ms) < deadline)); do sleep 0.3; done
  sleep 1
  echo "idle cycle $i: $CONNS held: pss $held kB; all closed: pss $(pss) kB"
done
for ((i = 1; i <= CHURN; i++)); do
  timeout --kill-after=5 60 "$LOAD" --addr "127.0.0.1:$port" --mode churn --conns 50 \
    --duration 10 --json >"$WORK/churn$i.json" 2>/dev/null || true
  sleep 1
  echo "churn 10 s #$i: $(jget conns_opened "$WORK/churn$i.json") connections, $(jget total "$WORK/churn$i.json") errors; pss $(pss) kB"
done
for i in 1 2 3; do
  timeout --kill-after=5 60 "$LOAD" --addr "127.0.0.1:$port" --mode echo --conns 1000 \
    --size 4096 --duration 10 --json >"$WORK/echo$i.json" 2>/dev/null || true
  sleep 1
  echo "echo 1000 x 4 KiB 10 s #$i: $(jget round_trips "$WORK/echo$i.json") round trips, $(jget total "$WORK/echo$i.json") errors; pss $(pss) kB"
done
echo "corral log: $(corral_log_problems cycles) WARN/ERROR lines"
corral_stop
