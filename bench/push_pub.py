#!/usr/bin/env python3
"""bench/push.sh's publisher: POST /publish/<topic> on one keep-alive connection.

usage: push_pub.py HOST:PORT TOPIC FIRST_SEQ COUNT RATE
Each body is `<seq> <unix ns now> ` padded with x to 100 bytes. RATE messages per
second (0: each as soon as the previous one was answered). Prints one JSON line:
sent, seconds, and the answers' median and max round trip in ms. Loopback only.
"""
import json
import socket
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
if not host.startswith("127."):
    sys.exit("loopback only")
topic, first, count, rate = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.create_connection((host, int(port)), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t0 = time.monotonic()
rtts = []
buf = b""
for i in range(count):
    if rate > 0:
        due = t0 + i / rate
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
    seq = first + i
    body = f"{seq} {time.time_ns()} ".encode()
    body += b"x" * max(0, 100 - len(body))
    req = (f"POST /publish/{topic} HTTP/1.1\r\nHost: b\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    a = time.monotonic()
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("publisher connection closed")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    if b" 204 " not in head.split(b"\r\n")[0]:
        sys.exit(f"publish refused: {head!r}")
    rtts.append((time.monotonic() - a) * 1000)
secs = time.monotonic() - t0
rtts.sort()
print(json.dumps({"sent": count, "seconds": round(secs, 3),
                  "rtt_ms_p50": round(rtts[len(rtts) // 2], 3) if rtts else None,
                  "rtt_ms_max": round(rtts[-1], 3) if rtts else None}))
