#!/usr/bin/env python3
"""tls_client.py: the two TLS clients bench/tls.sh needs that openssl and wrk are not.

  tls_client.py bulk HOST PORT SECONDS [CHUNK] [WINDOW]
      One TLS connection to an echo (or a proxy in front of one): writes CHUNK-byte
      blocks and reads the echo back, full duplex, with at most WINDOW bytes
      unanswered, for SECONDS. The echoed bytes are checked against what was sent.
      Prints `BULK sent=N received=N secs=S`.

  tls_client.py idle HOST PORT N HOLD_SECONDS
      Opens N TLS connections one after the other, each a full handshake (no session
      reuse), sends nothing, prints `IDLE open=N` once all are up (flushed, so the caller
      can measure the server), then holds them HOLD_SECONDS, or until stdin closes.

The server's certificate is not verified: its cost is the client's, and the
benchmark compares servers. Loopback (127.0.0.0/8) only.
"""
import ipaddress
import os
import select
import selectors
import socket
import ssl
import sys
import time


def context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def loopback(host):
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"{host}: loopback addresses only")


def bulk(host, port, secs, chunk=65536, window=1 << 20):
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = context().wrap_socket(s, server_hostname="localhost")
    s.setblocking(False)
    block = os.urandom(chunk)
    readsz = 262144
    pattern = block * (readsz // chunk + 2)
    sent = received = 0
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    t0 = time.monotonic()
    end = t0 + secs
    while True:
        now = time.monotonic()
        if now >= end:
            break
        progress = False
        if sent - received < window:
            try:
                n = s.send(block)
                sent += n
                progress = n > 0
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
        try:
            while True:
                d = s.recv(readsz)
                if not d:
                    sys.exit(f"the server closed after {received} bytes")
                # The stream echoed is `block` repeated: check where this piece falls.
                off = received % chunk
                if d != pattern[off : off + len(d)]:
                    sys.exit(f"echo mismatch at byte {received}")
                received += len(d)
                progress = True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        if not progress:
            events = selectors.EVENT_READ
            if sent - received < window:
                events |= selectors.EVENT_WRITE
            sel.modify(s, events)
            sel.select(min(0.1, max(0.0, end - now)))
    secs = time.monotonic() - t0
    print(f"BULK sent={sent} received={received} secs={secs:.3f}", flush=True)


def idle(host, port, n, hold):
    ctx = context()
    conns = []
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        conns.append(ctx.wrap_socket(s, server_hostname="localhost"))
    print(f"IDLE open={len(conns)} secs={time.monotonic() - t0:.2f}", flush=True)
    # Hold until told (stdin closes) or HOLD_SECONDS pass.
    end = time.monotonic() + hold
    while time.monotonic() < end:
        if select.select([sys.stdin], [], [], max(0.0, end - time.monotonic()))[0]:
            if not sys.stdin.buffer.read1(4096):
                break


def main():
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == "bulk":
        loopback(a[1])
        bulk(a[1], int(a[2]), float(a[3]), *(int(x) for x in a[4:6]))
    elif len(a) == 5 and a[0] == "idle":
        loopback(a[1])
        idle(a[1], int(a[2]), int(a[3]), float(a[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
