#!/usr/bin/env python3
"""HTTPS reload-storm client for bench/tls_reload_storm.sh: the same clients for every
server.

CONNS keep-alive HTTPS (HTTP/1.1 over TLS 1.3) connections, each sending GET / every
THINK_MS and waiting for the whole response (Content-Length), plus one connect/close
loop (a new TLS connection per request, `Connection: close`), all in one
single-threaded selector loop with non-blocking `ssl` sockets, for DURATION seconds.
The server certificate is verified against CA_FILE (the self-signed certificate the
script made) for the name `localhost`. Sessions are not resumed: every new connection
is a full handshake, as for a client that kept no ticket.

What it counts, like the plain storm_client.py: failed requests by kind (a reset, an
EOF before a complete response, a TLS error on an open connection, a timeout of 5 s, a
connect or handshake that failed, a non-200), keep-alive connections the server closed
between requests (`idle_closed_by_server`: not an error, but each is a reconnect; how
each ended is in `closes_seen`, and `responses_connection_close` counts keep-alive
responses that announced the close), and
the handshakes: `handshakes_keepalive` counts every completed handshake of the
keep-alive connections, so `forced_handshakes` = that minus CONNS (the first one each)
is the handshakes the reloads forced; a client whose connection survives never
handshakes again. The connect/close loop's handshakes are counted apart (`churn_cycles`:
they happen by design). Latency runs from the moment a request is due to its complete
response, so a request that first has to reconnect and handshake pays for it.
Prints one JSON object. Connects only to 127.0.0.0/8.
"""

import errno
import json
import resource
import selectors
import socket
import ssl
import sys
import time

GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
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
        self.ready = False  # handshake done
        self.buf = b""
        self.due_at = 0.0  # when the outstanding request was due (latency origin)
        self.next_at = 0.0
        self.waiting = False  # a request is due or in flight
        self.sent = False  # ... and it has been written
        self.events = 0


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    conns_n, duration, think = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]) / 1000
    ca = sys.argv[6]
    if not host.startswith("127."):
        sys.exit("tls_storm_client: loopback addresses only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sel = selectors.DefaultSelector()
    errors = {"reset": 0, "eof": 0, "tls": 0, "timeout": 0, "connect": 0, "non200": 0}
    lat = []
    ok = [0]
    churned = [0]
    idle_closed = [0]
    told_close = [0]  # keep-alive responses that said `Connection: close`
    hs = {"keepalive": 0, "churn": 0}
    versions = {}
    why = {}  # what ended connections the client did not close: exception text -> count

    def note(d, e):
        k = e if isinstance(e, str) else f"{type(e).__name__}: {e}"[:120]
        d[k] = d.get(k, 0) + 1

    def watch(c, ev):
        if c.events == ev:
            return
        if c.events:
            sel.modify(c.sock, ev, c)
        else:
            sel.register(c.sock, ev, c)
        c.events = ev

    def close(c):
        if c.sock is not None:
            if c.events:
                try:
                    sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
            c.sock.close()
        c.sock = None
        c.ready = False
        c.events = 0
        c.buf = b""

    def fail(c, kind, now):
        errors[kind] += 1
        close(c)
        c.waiting = c.sent = False
        c.next_at = now + (0.05 if kind == "connect" else 0.0)

    def open_(c, now):
        s = ctx.wrap_socket(socket.socket(), server_hostname="localhost",
                            do_handshake_on_connect=False,
                            suppress_ragged_eofs=False)  # an EOF without close_notify raises
        s.setblocking(False)
        try:
            rc = s.connect_ex((host, port))
        except OSError:
            s.close()
            return False
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            return False
        c.sock = s
        c.ready = False
        watch(c, selectors.EVENT_WRITE)
        return True

    def handshake(c, now):
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            watch(c, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            watch(c, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError):
            fail(c, "connect", now)
            return
        c.ready = True
        hs["churn" if c.churn else "keepalive"] += 1
        v = c.sock.version()
        versions[v] = versions.get(v, 0) + 1
        watch(c, selectors.EVENT_READ)
        if c.waiting and not c.sent:
            write(c, now)

    def write(c, now):
        try:
            c.sock.send(GET_CLOSE if c.churn else GET)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return  # retried from the loop (rare: a request is one small record)
        except OSError as e:
            fail(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "tls", now)
            return
        c.sent = True

    def start_request(c, now):
        c.due_at = now
        c.waiting = True
        c.sent = False
        if c.sock is None:
            if not open_(c, now):
                fail(c, "connect", now)
            return
        if c.ready:
            write(c, now)

    def readable(c, now):
        if not c.ready:
            handshake(c, now)
            return
        while c.sock is not None:
            try:
                data = c.sock.recv(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                return
            except ssl.SSLError as e:
                note(why, e)
                if c.waiting:
                    fail(c, "tls", now)
                else:
                    idle_closed[0] += 1
                    close(c)
                return
            except OSError as e:
                note(why, e)
                if c.waiting:
                    fail(c, "reset" if e.errno == errno.ECONNRESET else "eof", now)
                else:
                    idle_closed[0] += 1
                    close(c)
                return
            t = time.monotonic()
            if not data:
                note(why, "close_notify")
                if c.waiting:
                    fail(c, "eof", t)
                else:
                    idle_closed[0] += 1  # closed between requests: reopened lazily
                    close(c)
                return
            c.buf += data
            got = parse(c.buf)
            if got is None:
                continue
            status, used = got
            if not c.churn and b"\r\nconnection: close" in c.buf[:used].lower():
                told_close[0] += 1
            c.buf = c.buf[used:]
            c.waiting = c.sent = False
            if status != 200:
                errors["non200"] += 1
            else:
                ok[0] += 1
                lat.append(t - c.due_at)
            if c.churn:
                churned[0] += 1
                close(c)
                c.next_at = t
                return
            c.next_at = t + think

    conns = [Conn(False) for _ in range(conns_n)]
    start = time.monotonic()
    for i, c in enumerate(conns):
        if not open_(c, start):
            errors["connect"] += 1
        c.next_at = start + think * i / max(conns_n, 1)
    churn = Conn(True)
    churn.next_at = start
    everyone = conns + [churn]
    end = start + duration
    last_scan = 0.0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now - last_scan >= 0.005:
            last_scan = now
            for c in everyone:
                if c.waiting:
                    if now - c.due_at > TIMEOUT:
                        fail(c, "timeout", now)
                    elif c.ready and not c.sent:
                        write(c, now)
                elif c.next_at <= now:
                    start_request(c, now)
                elif c.sock is None and not c.churn:
                    pass  # reopened when its next request is due
        for key, ev in sel.select(timeout=0.005):
            c = key.data
            if c.sock is None:
                continue
            if not c.ready:
                handshake(c, time.monotonic())
            elif ev & selectors.EVENT_READ:
                readable(c, time.monotonic())
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 2) if lat else None

    print(json.dumps({
        "requests_ok": ok[0],
        "errors": sum(errors.values()),
        "by_kind": errors,
        "handshakes_keepalive": hs["keepalive"],
        "forced_handshakes": max(0, hs["keepalive"] - conns_n),
        "churn_cycles": churned[0],
        "handshakes_churn": hs["churn"],
        "tls_versions": versions,
        "idle_closed_by_server": idle_closed[0],
        "closes_seen": why,
        "responses_connection_close": told_close[0],
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 2) if lat else None,
    }))


if __name__ == "__main__":
    main()
