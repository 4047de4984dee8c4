#!/usr/bin/env bash
# tls.sh: TLS termination, corral vs nginx vs HAProxy, same certificate, same run
# (issue 23's benchmark). One worker each (corral workers = 1, nginx worker_processes 1,
# HAProxy nbthread 1), the server pinned to CPU SERVER_CPU and every client to
# CPU CLIENT_CPU, like http.sh. The certificates (ECDSA P-256 and RSA 2048, self-signed,
# SAN localhost + 127.0.0.1) are made by openssl in the work directory; TLS 1.3 is what
# every client and server here negotiates (printed once per server).
#
# Per key type and server, a fresh HTTPS listener answering "hello\n" to every request
# (corral `http`, nginx `return 200`, HAProxy `http-request return`), measured in turn:
#   full      full handshakes/s: HS_PROCS x `openssl s_time -new -www /` for DURATION s.
#             -new builds a fresh SSL object without a session for every connection,
#             so each is a full handshake (s_time prints '*' per connection, 'r' per
#             resumed one; both are counted and printed). One request per connection.
#   resumed   the same with `-reuse` (the first connection's session, a TLS 1.3 ticket,
#             offered on every next one); the share actually resumed is printed.
#   keepalive wrk -t1 -cWRK_CONNS over https (one handshake per connection, then
#             keep-alive): req/s and the server's CPU µs per request.
#   idle      worker memory per idle TLS connection, measured first on the fresh
#             server: IDLE_CONNS connections, each a full handshake then silent
#             (tls_client.py idle), Δ Rss and Δ Private of the worker (smaps_rollup) / N.
# For every rate the server's CPU (its worker: /proc/PID/stat ticks) is read around the
# run; "per CPU s" = how many the server did per second of its own CPU, the figure a
# client-bound run or a busy box does not distort. With ECDSA the s_time client pays
# about as much per handshake as the server (ECDHE + a signature check against the
# server's ECDHE + signing), so on one client CPU the rate is the client's and
# handshakes per server CPU second is the comparison; with RSA 2048 signing dominates
# and the server is the limit.
#
# Bulk (ECDSA certificate only: after the handshake the key type plays no part): one
# TLS connection pushing 64 KiB blocks full duplex (tls_client.py bulk, ≤ 1 MiB
# unanswered, every byte checked) for DURATION s through
#   corral-proxy   service = "proxy" with [listen.tls] -> the shared C echo_server
#   nginx-stream   stream { server { listen ssl; proxy_pass echo_server; } }
#   haproxy-tcp    mode tcp, bind ... ssl crt, server echo_server
#   corral-echo    service = "echo" with [listen.tls] (no backend; nginx and HAProxy
#                  have no echo service, so this line has no peer)
# The first three are the fair comparison: same TLS termination, same plaintext
# backend (echo_server on CLIENT_CPU with the client). Printed: MB echoed per second
# and per CPU second of the terminating process (each echoed byte was decrypted and
# encrypted once by it).
#
# Usage: bench/tls.sh
# Knobs: RUNS=1 DURATION=5 KEYS="ecdsa rsa" SERVERS="corral nginx haproxy"
#        TESTS="full resumed keepalive idle bulk" HS_PROCS=4 WRK_CONNS=100
#        IDLE_CONNS=3000 SERVER_CPU=1 CLIENT_CPU=0 QUIET_WAIT=10 NO_BUILD=1 KEEP=1
#        COMPACT=1 (corral's listeners get `compact_idle = true`)
# needs: openssl, wrk, nginx + libnginx-mod-stream, haproxy, python3, gcc
#        (apt-get install -y nginx haproxy wrk libnginx-mod-stream)
set -euo pipefail
QUIET_WAIT=${QUIET_WAIT:-10}
. "$(dirname "$0")/peer_lib.sh"

RUNS=${RUNS:-1}
DURATION=${DURATION:-5}
KEYS=${KEYS:-"ecdsa rsa"}
SERVERS=${SERVERS:-"corral nginx haproxy"}
TESTS=${TESTS:-"full resumed keepalive idle bulk"}
HS_PROCS=${HS_PROCS:-4}
WRK_CONNS=${WRK_CONNS:-100}
IDLE_CONNS=${IDLE_CONNS:-3000}
COMPACT=${COMPACT:-0}
COMPACT_LINE=""; [[ "$COMPACT" == 1 ]] && COMPACT_LINE="compact_idle = true"
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
HAPROXY_BIN=${HAPROXY_BIN:-/usr/sbin/haproxy}
CLIENT_PY=$ROOT/bench/tls_client.py

for t in openssl wrk python3 gcc; do command -v "$t" >/dev/null || die "$t missing"; done
[[ -x $NGINX_BIN && -x $HAPROXY_BIN ]] || die "needs nginx and haproxy (apt-get install -y nginx haproxy libnginx-mod-stream)"
has() { [[ " $TESTS " == *" $1 "* ]]; }

build_corral
ECHO_SERVER=$WORK/echo_server
gcc -O2 -o "$ECHO_SERVER" "$SHARED_BENCH/echo_server.c" || die "cannot build echo_server.c"
RES=$WORK/tls.tsv
: >"$RES"
LIMIT=$((RUNS * 600 + 600)) # bound of every server process

# ---- certificates ---------------------------------------------------------------------
CERTS=$WORK/certs
mkdir -p "$CERTS"
for k in ecdsa rsa; do
  case $k in
  ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  rsa) newkey=(-newkey rsa:2048) ;;
  esac
  openssl req -x509 "${newkey[@]}" -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$CERTS/$k.key" -out "$CERTS/$k.pem" 2>/dev/null || die "openssl req ($k) failed"
  cat "$CERTS/$k.pem" "$CERTS/$k.key" >"$CERTS/$k.both.pem" # HAProxy's crt: chain + key
done

# ---- HAProxy (foreground, by pid) -----------------------------------------------------
H_WRAPPER="" H_PID=""
# haproxy_start NAME PORT < cfg
haproxy_start() {
  local cfg=$WORK/haproxy-$1.cfg
  cat >"$cfg"
  "$HAPROXY_BIN" -c -q -f "$cfg" || die "haproxy rejects $cfg"
  timeout --signal=TERM --kill-after=10 "$LIMIT" taskset -c "$SERVER_CPU" "$HAPROXY_BIN" -f "$cfg" -db \
    >"$WORK/haproxy-$1.log" 2>&1 &
  H_WRAPPER=$!
  STARTED+=("$H_WRAPPER")
  local deadline=$(($(now_ms) + 10000))
  until ss -Htln "( sport = :$2 )" | grep -q .; do
    alive "$H_WRAPPER" || { cat "$WORK/haproxy-$1.log" >&2; die "haproxy ($1) exited at start"; }
    (($(now_ms) < deadline)) || die "haproxy ($1) not listening within 10 s"
    sleep 0.1
  done
  H_PID=$(cat /proc/"$H_WRAPPER"/task/*/children | awk '{ print $1; exit }')
  log "haproxy $1: pid $H_PID"
}
haproxy_stop() {
  [[ -n $H_WRAPPER ]] || return 0
  kill -TERM "$H_WRAPPER" 2>/dev/null || true
  wait "$H_WRAPPER" 2>/dev/null || true
  H_WRAPPER="" H_PID=""
}

NGINX_TEMP="client_body_temp_path @PREFIX@/tmp/body; proxy_temp_path @PREFIX@/tmp/proxy;
    fastcgi_temp_path @PREFIX@/tmp/fastcgi; uwsgi_temp_path @PREFIX@/tmp/uwsgi;
    scgi_temp_path @PREFIX@/tmp/scgi;"

# ---- servers ---------------------------------------------------------------------------
# start SERVER KEY PORT [BACKEND_PORT] -> SERVER_PIDS (the processes that do the work)
# SERVER: corral | nginx | haproxy (HTTPS), corral-proxy | nginx-stream | haproxy-tcp
# (TLS termination to BACKEND_PORT), corral-echo (TLS echo)
start() {
  local s=$1 k=$2 port=$3 be=${4:-} cert=$CERTS/$2.pem key=$CERTS/$2.key
  local svc
  case $s in
  corral | corral-proxy | corral-echo)
    case $s in
    corral) svc='service = "http"
body = "hello\n"' ;;
    corral-proxy) svc="service = \"proxy\"
upstreams = [\"127.0.0.1:$be\"]" ;;
    corral-echo) svc='service = "echo"' ;;
    esac
    corral_start "$s-$k-$port" "$LIMIT" "$SERVER_CPU" <<EOF
[master]
workers = 1
[worker]
max_connections = 19000
idle_timeout = "10m"
[log]
level = "warn"
[[listen]]
address = "127.0.0.1:$port"
$svc
backlog = 4096
[listen.tls]
cert = "$cert"
key = "$key"
$COMPACT_LINE
EOF
    SERVER_PIDS=$(corral_workers | xargs)
    ;;
  nginx)
    # keepalive_requests raised from the stock 1000 so that wrk's connections never
    # re-handshake (corral has no such limit); TLSv1.3 named because nginx 1.22's default
    # ssl_protocols stops at TLSv1.2; session tickets are nginx's default (on).
    nginx_start "$s-$k-$port" "$LIMIT" "$SERVER_CPU" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
    default_type text/plain;
    access_log off;
    tcp_nodelay on;
    $NGINX_TEMP
    client_header_timeout 600s;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 "hello\n"; }
    }
}
EOF
    SERVER_PIDS=$(nginx_workers | xargs)
    ;;
  nginx-stream)
    nginx_start "$s-$k-$port" "$LIMIT" "$SERVER_CPU" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
stream {
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass 127.0.0.1:$be;
    }
}
EOF
    SERVER_PIDS=$(nginx_workers | xargs)
    ;;
  haproxy | haproxy-tcp)
    local mode=http front="    http-request return status 200 content-type text/plain string \"hello\\n\"" back=""
    if [[ $s == haproxy-tcp ]]; then
      mode=tcp front="    default_backend be"
      back="backend be
    server echo 127.0.0.1:$be"
    fi
    haproxy_start "$s-$k-$port" "$port" <<EOF
global
    nbthread 1
    maxconn 9000
    log stderr format short local0 err
defaults
    mode $mode
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    timeout http-request 600s
frontend fe
    bind 127.0.0.1:$port ssl crt $CERTS/$k.both.pem
$front
$back
EOF
    SERVER_PIDS=$H_PID
    ;;
  esac
}
stop() {
  case $1 in
  corral*) corral_stop ;;
  nginx*) nginx_stop ;;
  haproxy*) haproxy_stop ;;
  esac
}

# negotiated PORT -> "TLSv1.3/TLS_AES_256_GCM_SHA384/X25519"
negotiated() {
  local out
  out=$(timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>&1) || true
  echo "$(grep -m1 -oE 'New, TLSv[0-9.]+' <<<"$out" | cut -d' ' -f2)/$(grep -m1 -oE 'Cipher is [A-Z0-9_-]+' <<<"$out" | cut -d' ' -f3)/$(grep -m1 -oE 'Server Temp Key: [A-Za-z0-9-]+' <<<"$out" | cut -d' ' -f4)"
}

# ---- measurements ----------------------------------------------------------------------
# per_cpu COUNT TICKS0 TICKS1 -> COUNT per second of server CPU; us_per COUNT T0 T1 -> µs each
per_cpu() { awk -v n="$1" -v a="$2" -v b="$3" -v hz="$CLK_TCK" 'BEGIN { if (n == "NA" || b <= a) print "NA"; else printf "%.0f", n / ((b - a) / hz) }'; }
us_per() { awk -v n="$1" -v a="$2" -v b="$3" -v hz="$CLK_TCK" 'BEGIN { if (n == "NA" || n <= 0) print "NA"; else printf "%.1f", (b - a) / hz * 1e6 / n }'; }

# handshakes SERVER KEY PORT new|reuse TAG: HS_PROCS s_time clients at once
handshakes() {
  local port=$3 mode=$4 tag=$5 i pids=() q la t0 t1 s0 s1
  q=$(wait_quiet)
  la=$(loadavg)
  t0=$(cpu_ticks $SERVER_PIDS)
  s0=$(now_ms)
  for ((i = 0; i < HS_PROCS; i++)); do
    timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" openssl s_time -connect "127.0.0.1:$port" \
      "-$mode" -www / -time "$DURATION" >"$WORK/$tag.$i.out" 2>"$WORK/$tag.$i.err" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  s1=$(now_ms)
  t1=$(cpu_ticks $SERVER_PIDS)
  # s_time prints one character per connection on a line of their own: 'r' resumed,
  # '*' new (TLS 1.2 or 1.3).
  local full resumed n secs
  full=$( (cat "$WORK/$tag".*.out | grep -E '^[r*]+$' || true) | tr -cd '*' | wc -c)
  resumed=$( (cat "$WORK/$tag".*.out | grep -E '^[r*]+$' || true) | tr -cd 'r' | wc -c)
  n=$((full + resumed))
  secs=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print (b - a) / 1000 }')
  printf '%s\tkey=%s\ttest=%s\trun=%d\tconns=%d\tfull=%d\tresumed=%d\tper_s=%.0f\tserver_cpu%%=%s\tper_cpu_s=%s\tus_each=%s\tloadavg=%s\t%s\n' \
    "$1" "$2" "$([[ $mode == new ]] && echo full || echo resumed)" "$r" "$n" "$full" "$resumed" \
    "$(awk -v n="$n" -v s="$secs" 'BEGIN { print n / s }')" "$(cpu_pct "$t0" "$t1" "$secs")" \
    "$(per_cpu "$n" "$t0" "$t1")" "$(us_per "$n" "$t0" "$t1")" "$la" "$q" | tee -a "$RES"
}

# keepalive SERVER KEY PORT TAG
keepalive() {
  local port=$3 tag=$4 q la t0 t1 s0 s1 f=$WORK/$4.wrk
  q=$(wait_quiet)
  la=$(loadavg)
  t0=$(cpu_ticks $SERVER_PIDS)
  s0=$(now_ms)
  timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" --latency \
    "https://127.0.0.1:$port/" >"$f" 2>&1 || true
  s1=$(now_ms)
  t1=$(cpu_ticks $SERVER_PIDS)
  local n rps p99 errs secs
  n=$(awk '/requests in/ { print $1; exit }' "$f")
  rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$f")
  p99=$(awk '$1 == "99%" { print $2 }' "$f")
  errs=$( (grep -E 'Socket errors|Non-2xx' "$f" || true) | tr -s ' \n' ' ')
  secs=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print (b - a) / 1000 }')
  printf '%s\tkey=%s\ttest=keepalive\trun=%d\trequests=%s\tper_s=%s\tp99=%s\tserver_cpu%%=%s\tper_cpu_s=%s\tus_each=%s\terrors=%s\tloadavg=%s\t%s\n' \
    "$1" "$2" "$r" "${n:-NA}" "${rps:-NA}" "${p99:-NA}" "$(cpu_pct "$t0" "$t1" "$secs")" \
    "$(per_cpu "${n:-NA}" "$t0" "$t1")" "$(us_per "${n:-NA}" "$t0" "$t1")" "${errs:-none}" "$la" "$q" | tee -a "$RES"
}

# idle SERVER KEY PORT TAG
idle() {
  local port=$3 tag=$4 m0 m1 est f=$WORK/$4.idle cpid
  sleep 1
  m0=$(mem_sum $SERVER_PIDS)
  # the client holds its connections until its stdin (a fifo we keep open) closes
  mkfifo "$WORK/$tag.fifo"
  timeout $((IDLE_CONNS / 100 + 120)) taskset -c "$CLIENT_CPU" python3 "$CLIENT_PY" idle 127.0.0.1 "$port" \
    "$IDLE_CONNS" $((IDLE_CONNS / 100 + 100)) <"$WORK/$tag.fifo" >"$f" 2>"$f.err" &
  cpid=$!
  STARTED+=("$cpid")
  exec 7>"$WORK/$tag.fifo"
  local deadline=$(($(now_ms) + (IDLE_CONNS / 100 + 100) * 1000))
  until grep -q '^IDLE' "$f"; do
    alive "$cpid" || break
    (($(now_ms) < deadline)) || break
    sleep 0.2
  done
  sleep 2 # settle: tickets written, buffers released
  est=$(estab_count "$port")
  m1=$(mem_sum $SERVER_PIDS)
  exec 7>&-
  wait "$cpid" 2>/dev/null || true
  local r0 u0 r1 u1
  read -r r0 _ u0 <<<"$m0"
  read -r r1 _ u1 <<<"$m1"
  pc() { awk -v a="$1" -v b="$2" -v n="$est" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "NA" }'; }
  printf '%s\tkey=%s\ttest=idle\trun=%d\tN=%d\test=%d\tclient=%s\trss_kB=%d->%d\trss_B/conn=%s\tprivate_B/conn=%s\n' \
    "$1" "$2" "$r" "$IDLE_CONNS" "$est" "$(head -c 60 "$f" | tr -d '\n') $(tail -c 80 "$f.err" | tr -d '\n')" \
    "$r0" "$r1" "$(pc "$r0" "$r1")" "$(pc "$u0" "$u1")" | tee -a "$RES"
}

# bulk SERVER PORT TAG
bulk() {
  local port=$2 tag=$3 q t0 t1 f=$WORK/$3.bulk
  q=$(wait_quiet)
  t0=$(cpu_ticks $SERVER_PIDS)
  timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" python3 "$CLIENT_PY" bulk 127.0.0.1 "$port" "$DURATION" \
    >"$f" 2>&1 || true
  t1=$(cpu_ticks $SERVER_PIDS)
  local bytes secs
  bytes=$(grep -oP '^BULK .*received=\K[0-9]+' "$f" || echo NA)
  secs=$(grep -oP '^BULK .*secs=\K[0-9.]+' "$f" || echo NA)
  printf '%s\tkey=ecdsa\ttest=bulk\trun=%d\tMB=%s\tMB_per_s=%s\tserver_cpu%%=%s\tMB_per_cpu_s=%s\tclient=%s\tloadavg=%s\t%s\n' \
    "$1" "$r" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')" \
    "$(awk -v b="$bytes" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", b / 1e6 / s; else print "NA" }')" \
    "$(cpu_pct "$t0" "$t1" "$secs")" "$(per_cpu "$(awk -v b="$bytes" 'BEGIN { printf "%.3f", b / 1e6 }')" "$t0" "$t1")" \
    "$(tail -n1 "$f" | cut -c1-80)" "$(loadavg)" "$q" | tee -a "$RES"
}

# ---- the runs --------------------------------------------------------------------------
log "work directory $WORK; box: $(nproc) CPUs, load $(loadavg)"
for ((r = 1; r <= RUNS; r++)); do
  for k in $KEYS; do
    for s in $SERVERS; do
      has full || has resumed || has keepalive || has idle || continue
      port=$(free_port)
      start "$s" "$k" "$port"
      sleep 0.5
      ((r > 1)) || printf '%s\tkey=%s\tnegotiated=%s\n' "$s" "$k" "$(negotiated "$port")" | tee -a "$RES"
      # idle first, on a fresh server: after thousands of connections the heap has
      # room freed by them, and new connections would reuse it unseen by Rss.
      ! has idle || idle "$s" "$k" "$port" "$s-$k-$r-idle"
      ! has full || handshakes "$s" "$k" "$port" new "$s-$k-$r-full"
      ! has resumed || handshakes "$s" "$k" "$port" reuse "$s-$k-$r-resumed"
      ! has keepalive || keepalive "$s" "$k" "$port" "$s-$k-$r-ka"
      [[ $s != corral ]] || printf '%s\tkey=%s\trun=%d\tcorral_log_warn_err=%s\n' "$s" "$k" "$r" "$(corral_log_problems "$s-$k-$port")" >>"$RES"
      stop "$s"
    done
  done
  if has bulk; then
    for s in corral-proxy nginx-stream haproxy-tcp corral-echo; do
      case $s in corral*) ;; *) [[ " $SERVERS " == *" ${s%-*} "* ]] || continue ;; esac
      # a fresh echo_server each time: it does not ignore SIGPIPE, so the proxy
      # closing while it still writes the last echoes ends it
      eport=$(free_port)
      c_echo_start "$ECHO_SERVER" "$eport" "$LIMIT" "$CLIENT_CPU"
      port=$(free_port)
      start "$s" ecdsa "$port" "$eport"
      sleep 0.5
      bulk "$s" "$port" "$s-$r"
      stop "$s"
      c_echo_stop
    done
  fi
done

# ---- summary ---------------------------------------------------------------------------
# col SERVER KEY TEST FIELD -> median over runs
col() { grep -P "^$1\tkey=$2\ttest=$3\t" "$RES" | grep -oP "\t$4=\K[0-9.]+" | median; }
echo
echo "== TLS, 1 worker each, server on CPU $SERVER_CPU, clients on CPU $CLIENT_CPU, ${DURATION}s per measurement, $RUNS run(s) (medians)"
echo "   ratio = corral / peer; per CPU s = per second of the server's own CPU (higher is better); us = server CPU µs each (lower is better)"
peers=$(for s in $SERVERS; do [[ $s == corral ]] || echo "$s"; done | xargs)
for k in $KEYS; do
  for t in full resumed keepalive; do
    has "$t" || continue
    line=$(printf '%-6s %-9s corral %7s/s %7s/cpu_s %6sus' "$k" "$t" "$(col corral "$k" "$t" per_s)" "$(col corral "$k" "$t" per_cpu_s)" "$(col corral "$k" "$t" us_each)")
    for p in $peers; do
      line+=$(printf ' | %s %7s/s %7s/cpu_s %6sus  x%s/s x%s/cpu_s' "$p" "$(col "$p" "$k" "$t" per_s)" "$(col "$p" "$k" "$t" per_cpu_s)" "$(col "$p" "$k" "$t" us_each)" \
        "$(ratio "$(col corral "$k" "$t" per_s)" "$(col "$p" "$k" "$t" per_s)")" \
        "$(ratio "$(col corral "$k" "$t" per_cpu_s)" "$(col "$p" "$k" "$t" per_cpu_s)")")
    done
    echo "$line"
  done
  if has idle; then
    line=$(printf '%-6s %-9s corral %6s B/conn rss %6s private' "$k" idle "$(col corral "$k" idle rss_B/conn)" "$(col corral "$k" idle private_B/conn)")
    for p in $peers; do
      line+=$(printf ' | %s %6s rss %6s private  x%s' "$p" "$(col "$p" "$k" idle rss_B/conn)" "$(col "$p" "$k" idle private_B/conn)" \
        "$(ratio "$(col corral "$k" idle rss_B/conn)" "$(col "$p" "$k" idle rss_B/conn)")")
    done
    echo "$line"
  fi
done
if has bulk; then
  line=$(printf '%-6s %-9s corral-proxy %5s MB/s %5s MB/cpu_s' ecdsa bulk "$(col corral-proxy ecdsa bulk MB_per_s)" "$(col corral-proxy ecdsa bulk MB_per_cpu_s)")
  for p in nginx-stream haproxy-tcp; do
    grep -qP "^$p\t" "$RES" || continue
    line+=$(printf ' | %s %5s MB/s %5s MB/cpu_s  x%s/cpu_s' "$p" "$(col "$p" ecdsa bulk MB_per_s)" "$(col "$p" ecdsa bulk MB_per_cpu_s)" \
      "$(ratio "$(col corral-proxy ecdsa bulk MB_per_cpu_s)" "$(col "$p" ecdsa bulk MB_per_cpu_s)")")
  done
  line+=$(printf ' | corral-echo %5s MB/s %5s MB/cpu_s' "$(col corral-echo ecdsa bulk MB_per_s)" "$(col corral-echo ecdsa bulk MB_per_cpu_s)")
  echo "$line"
fi
echo "(goals, issue 23: keepalive us ratio <= 1/1.2 (corral >= 1.2x nginx per CPU s); ecdsa full >= 1.0x nginx; idle <= 0.5x nginx)"
