#!/usr/bin/env bash
# Reloads and binary upgrades under wrk keep-alive load: client-visible errors for
# corral and nginx in the same session (the shared reload_under_load.sh drives wrk and
# runs the action every INTERVAL seconds).
# usage: bench/http_reload.sh [DURATION_S=20] [RELOAD_INTERVAL_S=2] [UPGRADE_INTERVAL_S=5]
# needs: nginx, wrk; ../shared/bench next to the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SHARED=${SHARED_BENCH:-$REPO/../shared/bench}
. "$SHARED/lib.sh"
DUR=${1:-20}; RI=${2:-2}; UI=${3:-5}
command -v wrk >/dev/null && [ -x "$NGINX_BIN" ] || { echo "needs wrk and nginx" >&2; exit 2; }
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --quiet
WORK=$(mktemp -d "$BENCH_TMP/corral-reload.XXXXXX")
# The upgrade re-executes the binary at the path the master was started from.
cp "$REPO/target/release/corral" "$WORK/corral"
BIN=$WORK/corral
PORT=${PORT:-8091}
CPID=""
cleanup() {
  if [ -s "$WORK/corral.pid" ]; then "$BIN" -s stop -c "$WORK/c.toml" >/dev/null 2>&1 || true; fi
  [ -n "$CPID" ] && kill -0 "$CPID" 2>/dev/null && kill "$CPID" 2>/dev/null
  nginx_stop
}
trap cleanup EXIT
cat > "$WORK/c.toml" <<EOC
[master]
workers = 2
pid_file = "$WORK/corral.pid"
drain_timeout = "10s"
[log]
level = "warn"
file = "$WORK/corral.log"
[[listen]]
address = "127.0.0.1:$PORT"
service = "http"
body = "hello\n"
backlog = 4096
EOC
corral_start() {
  "$BIN" -c "$WORK/c.toml" &
  CPID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
}
corral_stop() {
  "$BIN" -s stop -c "$WORK/c.toml" >/dev/null || true
  wait "$CPID" 2>/dev/null || true
  CPID=""
}
RES="$BENCH_TMP/results/reload.tsv"
run() { # label url interval action
  LABEL=$1 "$SHARED/reload_under_load.sh" "$2" "$DUR" "$3" "$4" 2 100 "" >/dev/null 2>&1 || true
  grep "^$1	" "$RES" | tail -1
}
C2=$SHARED/conf/nginx-http-2w.conf
nreload="$NGINX_BIN -c $C2 -p $NGINX_PREFIX -e $NGINX_PREFIX/logs/error.log -s reload"
nupgrade="$SHARED/nginx_binary_upgrade.sh $(nginx_pidfile)"

results=()
nginx_start "$C2"; results+=("$(run nginx-2w-reload http://127.0.0.1:8080/ "$RI" "$nreload")"); nginx_stop
corral_start; results+=("$(run corral-2w-reload "http://127.0.0.1:$PORT/" "$RI" "$BIN -s reload --no-wait -c $WORK/c.toml")"); corral_stop
nginx_start "$C2"; results+=("$(run nginx-2w-upgrade http://127.0.0.1:8080/ "$UI" "$nupgrade")"); nginx_stop
corral_start; results+=("$(run corral-2w-upgrade "http://127.0.0.1:$PORT/" "$UI" "$BIN -s upgrade --no-wait -c $WORK/c.toml")")
# After upgrades the master is another process: stop it through the pid file.
"$BIN" -s stop -c "$WORK/c.toml" >/dev/null || true; CPID=""

printf '\n%-20s %8s %10s %8s %7s\n' scenario actions requests errors "(c/r/w/t/non2xx)"
for line in "${results[@]}"; do
  echo "$line" | tr '\t' '\n' | awk -F= '
    NR==1{label=$0} /^actions=/{a=$2} /^requests=/{r=$2} /^errors_total=/{e=$2}
    /^connect=/{c=$2} /^read=/{rd=$2} /^write=/{w=$2} /^timeout=/{t=$2} /^non2xx3xx=/{n=$2}
    END{printf "%-20s %8s %10s %8s %s/%s/%s/%s/%s\n", label, a, r, e, c, rd, w, t, n}'
done
