#!/usr/bin/env python3
"""Reload-storm client for bench/reload_storm.sh: the same clients for every server.

CONNS keep-alive HTTP/1.1 connections, each sending GET / every THINK_MS and waiting
for the whole response (Content-Length), plus one connect/close loop (a request with
`Connection: close`, read to EOF, reconnect), all in one single-threaded selector
loop, for DURATION seconds. Every failure is counted by kind, like a user would feel
it: a reset, an EOF before a complete response (also on an idle keep-alive connection
the server closed under a request: nginx's reload), a timeout, a refused connect, a
non-200. A keep-alive connection that failed is reopened, as a browser would.
Prints one JSON object. Connects only to 127.0.0.0/8.
"""

import errno
import json
import resource
import selectors
import socket
import sys
import time

GET = b"GET / HTTP/1.1\r\nHost: storm\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: storm\r\nConnection: close\r\n\r\n"
TIMEOUT = 5.0


def parse(buf):
    """(status, total length) once a full response is in buf, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return (0, end + 4)
    length = 0
    for h in head[1:]:
        k, _, v = h.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    if len(buf) < end + 4 + length:
        return None
    return (status, end + 4 + length)


class Conn:
    def __init__(self, churn):
        self.churn = churn
        self.sock = None
        self.buf = b""
        self.sent_at = 0.0
        self.next_at = 0.0
        self.waiting = False


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    conns_n, duration, think = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]) / 1000
    if not host.startswith("127."):
        sys.exit("storm_client: loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    errors = {"reset": 0, "eof": 0, "timeout": 0, "connect": 0, "non200": 0}
    lat = []
    ok = 0
    churned = 0
    idle_closed = [0]

    def fail(c, kind):
        errors[kind] += 1
        close(c)

    def close(c):
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        c.waiting = False
        c.buf = b""

    def open_(c):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            errors["connect"] += 1
            s.close()
            return False
        c.sock = s
        sel.register(s, selectors.EVENT_READ, c)
        return True

    def send(c, now):
        if c.sock is None and not open_(c):
            c.next_at = now + 0.05
            return
        try:
            c.sock.sendall(GET_CLOSE if c.churn else GET)
        except BlockingIOError:
            pass
        except OSError as e:
            fail(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "connect")
            c.next_at = now + 0.01
            return
        c.sent_at = now
        c.waiting = True

    conns = [Conn(False) for _ in range(conns_n)]
    start = time.monotonic()
    for i, c in enumerate(conns):
        open_(c)
        c.next_at = start + think * i / max(conns_n, 1)
    churn = Conn(True)
    churn.next_at = start
    everyone = conns + [churn]
    end = start + duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for c in everyone:
            if c.waiting:
                if now - c.sent_at > TIMEOUT:
                    fail(c, "timeout")
                    c.next_at = now
            elif c.next_at <= now:
                send(c, now)
        for key, _ in sel.select(timeout=0.01):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(c, "reset" if e.errno == errno.ECONNRESET else "eof")
                c.next_at = time.monotonic()
                continue
            t = time.monotonic()
            if not data:
                if c.waiting:
                    fail(c, "eof")
                else:
                    idle_closed[0] += 1  # closed between requests: reopened lazily
                    close(c)
                c.next_at = t
                continue
            c.buf += data
            got = parse(c.buf)
            if got is None:
                continue
            status, used = got
            c.buf = c.buf[used:]
            c.waiting = False
            if status != 200:
                errors["non200"] += 1
            else:
                ok += 1
                lat.append(t - c.sent_at)
            if c.churn:
                churned += 1
                close(c)
                c.next_at = t
            else:
                c.next_at = t + think
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 2) if lat else None

    print(json.dumps({
        "requests_ok": ok,
        "errors": sum(errors.values()),
        "by_kind": errors,
        "churn_cycles": churned,
        "idle_closed_by_server": idle_closed[0],
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 2) if lat else None,
    }))


if __name__ == "__main__":
    main()
