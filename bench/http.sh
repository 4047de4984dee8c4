#!/usr/bin/env bash
# corral `http` vs nginx `return 200` under wrk keep-alive, 1 worker (pinned like the
# shared baseline: server on CPU 1, wrk on CPU 0) and 2 workers (unpinned), runs
# alternated A B A B in the same session. Prints req/s and p99 medians and the ratio.
# usage: bench/http.sh [RUNS=3] [DURATION_S=10]
# Knobs: NO_BUILD=1, CORRAL_BIN (another build, e.g. for before/after), BENCH_TMP (the
# shared lib's work dir, default /tmp/bench). Also prints each server's CPU (% of one
# core) and its CPU time per request: a server below ~100 % is not what limits the rate.
# needs: nginx, wrk (apt-get install -y nginx wrk); ../shared/bench next to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SHARED=${SHARED_BENCH:-$REPO/../shared/bench}
. "$SHARED/lib.sh"
RUNS=${1:-3}; DUR=${2:-10}
command -v wrk >/dev/null && [ -x "$NGINX_BIN" ] || { echo "needs wrk and nginx" >&2; exit 2; }
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --quiet
BIN=${CORRAL_BIN:-$REPO/target/release/corral}
WORK=$(mktemp -d "$BENCH_TMP/corral-http.XXXXXX")
PORT=${PORT:-8090}
CPID=""
cleanup() {
  [ -n "$CPID" ] && kill -0 "$CPID" 2>/dev/null && { "$BIN" -s stop -c "$WORK/c.toml" >/dev/null 2>&1 || kill "$CPID"; }
  nginx_stop
}
trap cleanup EXIT

corral_start() { # workers cpus
  cat > "$WORK/c.toml" <<EOC
[master]
workers = $1
pid_file = "$WORK/corral.pid"
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$PORT"
service = "http"
body = "hello\n"
backlog = 4096
EOC
  if [ -n "$2" ]; then taskset -c "$2" "$BIN" -c "$WORK/c.toml" 2>>"$WORK/corral.log" &
  else "$BIN" -c "$WORK/c.toml" 2>>"$WORK/corral.log" & fi
  CPID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 0.5
}
corral_stop() { "$BIN" -s stop -c "$WORK/c.toml" >/dev/null; wait "$CPID" 2>/dev/null || true; CPID=""; }

summary() { grep "^$1	SUMMARY" "$BENCH_TMP/results/http.tsv" | tail -1; }
field() { # summary-line key -> median
  echo "$1" | tr '\t' '\n' | awk -v k="$2:" '$1==k{print $2}'; }

declare -A rps p99 cpu
for setup in 1w 2w; do
  for r in $(seq "$RUNS"); do
    if [ $setup = 1w ]; then
      nginx_start "$SHARED/conf/nginx-http-1w.conf" 1
      SERVER_PIDS="$(nginx_workers)" LABEL=nginx-$setup WARMUP=1 "$SHARED/http_bench.sh" http://127.0.0.1:8080/ 1 "$DUR" 1 100 0 >/dev/null
      nginx_stop
      corral_start 1 1
      SERVER_PIDS="$(child_pids "$CPID")" LABEL=corral-$setup WARMUP=1 "$SHARED/http_bench.sh" "http://127.0.0.1:$PORT/" 1 "$DUR" 1 100 0 >/dev/null
      corral_stop
    else
      nginx_start "$SHARED/conf/nginx-http-2w.conf"
      SERVER_PIDS="$(nginx_workers)" LABEL=nginx-$setup WARMUP=1 "$SHARED/http_bench.sh" http://127.0.0.1:8080/ 1 "$DUR" 2 100 "" >/dev/null
      nginx_stop
      corral_start 2 ""
      SERVER_PIDS="$(child_pids "$CPID")" LABEL=corral-$setup WARMUP=1 "$SHARED/http_bench.sh" "http://127.0.0.1:$PORT/" 1 "$DUR" 2 100 "" >/dev/null
      corral_stop
    fi
    for who in nginx corral; do
      s=$(summary "$who-$setup")
      rps[$who-$setup]+="$(field "$s" rps) "
      p99[$who-$setup]+="$(field "$s" p99_us) "
      cpu[$who-$setup]+="$(field "$s" server_cpu%) "
    done
  done
done
med() { printf '%s\n' $1 | stats | awk '{print $1}'; }
printf '\n%-8s %14s %14s %8s %14s %14s %8s\n' setup "corral req/s" "nginx req/s" ratio "corral p99 us" "nginx p99 us" ratio
for setup in 1w 2w; do
  cr=$(med "${rps[corral-$setup]}"); nr=$(med "${rps[nginx-$setup]}")
  cp=$(med "${p99[corral-$setup]}"); np=$(med "${p99[nginx-$setup]}")
  printf '%-8s %14.0f %14.0f %8.2f %14.0f %14.0f %8.2f\n' "$setup" "$cr" "$nr" "$(awk -v a="$cr" -v b="$nr" 'BEGIN{print a/b}')" \
    "$cp" "$np" "$(awk -v a="$cp" -v b="$np" 'BEGIN{print a/b}')"
done
printf '\n%-8s %12s %12s %16s %16s %8s\n' setup "corral cpu%" "nginx cpu%" "corral us/req" "nginx us/req" ratio
for setup in 1w 2w; do
  cr=$(med "${rps[corral-$setup]}"); nr=$(med "${rps[nginx-$setup]}")
  cc=$(med "${cpu[corral-$setup]}"); nc=$(med "${cpu[nginx-$setup]}")
  cu=$(awk -v c="$cc" -v r="$cr" 'BEGIN{print c/100*1e6/r}'); nu=$(awk -v c="$nc" -v r="$nr" 'BEGIN{print c/100*1e6/r}')
  printf '%-8s %12.0f %12.0f %16.2f %16.2f %8.2f\n' "$setup" "$cc" "$nc" "$cu" "$nu" "$(awk -v a="$cu" -v b="$nu" 'BEGIN{print a/b}')"
done
echo "(medians of $RUNS alternated runs of wrk -c100 -d${DUR}s; p99 ratio < 1 means corral is faster;"
echo " us/req = server CPU time per request, ratio < 1 means corral spends less)"
