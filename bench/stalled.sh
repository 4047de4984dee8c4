#!/usr/bin/env bash
# stalled.sh: how long a new connection waits when one worker is stopped (issue 26's
# "nobody waits on a stalled worker"; goal: none over 200 ms). A benchmark, not a test.
#
#   corral: echo, `accept = "reuseport"`, WORKERS workers, watchdog_timeout 60 s (so
#           the watchdog serves no one: only the master's lending of the stopped slot's
#           queue can). One worker is SIGSTOPped, then CONNS new connections are opened
#           one every INTERVAL_MS ms (each lands on a worker's queue by the kernel's
#           hash), each sends a line and waits for its echo; the stopped worker is
#           SIGCONTed after. Measured per connection: connect + first echo, in ms.
#
# Usage: bench/stalled.sh     Knobs: WORKERS=4 CONNS=200 INTERVAL_MS=10 NO_BUILD=1 KEEP=1
# Last line: conns=<N> failed=<F> over_200ms=<K> p50_ms= p99_ms= max_ms=
set -euo pipefail
. "$(dirname "$0")/peer_lib.sh"

WORKERS=${WORKERS:-4}
CONNS=${CONNS:-200}
INTERVAL_MS=${INTERVAL_MS:-10}

build_corral
PORT=$(free_port)
corral_start stalled 300 <<EOF2
[master]
workers = $WORKERS
watchdog_timeout = "60s"
[log]
level = "info"
[[listen]]
address = "127.0.0.1:$PORT"
service = "echo"
accept = "reuseport"
EOF2
WS=($(corral_workers))
W=${WS[0]}
kill -STOP "$W"
log "worker $W stopped; $CONNS new connections, one every $INTERVAL_MS ms"
OUT=$(timeout 120 python3 - "$PORT" "$CONNS" "$INTERVAL_MS" <<'PY'
import socket, sys, time, threading
port, n, gap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000
res = [None] * n
def one(i):
    t = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.settimeout(30)
        msg = b"stalled %d\n" % i
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = s.recv(len(msg) - len(got))
            if not b:
                break
            got += b
        res[i] = (time.monotonic() - t) * 1000 if got == msg else None
        s.close()
    except OSError:
        res[i] = None
ts = []
for i in range(n):
    th = threading.Thread(target=one, args=(i,)); th.start(); ts.append(th)
    time.sleep(gap)
for th in ts:
    th.join()
ok = sorted(r for r in res if r is not None)
q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")
print(f"conns={n} failed={n - len(ok)} over_200ms={sum(1 for r in ok if r > 200)} "
      f"p50_ms={q(0.5):.1f} p99_ms={q(0.99):.1f} max_ms={(ok[-1] if ok else float('nan')):.1f}")
PY
)
kill -CONT "$W"
LENDS=$(grep -c "accepts on its sockets" "$WORK/corral-stalled/corral.log" || true)
log "slots lent while stopped: $LENDS; watchdog kills: $(grep -c 'sent no heartbeat' "$WORK/corral-stalled/corral.log" || true)"
corral_stop
echo "$OUT"
