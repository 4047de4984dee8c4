#!/usr/bin/env python3
"""A TLS client for corral's black-box tests, driven line by line on stdin.

Usage: tls_client.py HOST PORT CA SERVER_NAME [MIN_VERSION] [MAX_VERSION]
Each line on stdin is a command; each answer is one JSON line on stdout:
  echo MSG        new connection (resuming the last session if there is one),
                  send MSG + newline, read the echoed line; keep its session
  probe MSG       the same, but the saved session stays the one it was
  get PATH        new connection, an HTTP/1.1 GET with Connection: close
  forget          drop the saved session (the next connection is a full handshake)
  open            a connection that stays open for `send`
  send MSG        on that connection: MSG + newline, read the echoed line
Every answer has: ok, version, reused, subject (the server certificate's CN),
reply or error. Uses only the standard library's ssl module (OpenSSL).
"""
import json
import socket
import ssl
import sys

host, port, ca, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
if len(sys.argv) > 5 and sys.argv[5]:
    ctx.minimum_version = versions[sys.argv[5]]
if len(sys.argv) > 6 and sys.argv[6]:
    ctx.maximum_version = versions[sys.argv[6]]
session = None
kept = None


def subject(t):
    cert = t.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return ""


def connect():
    global session
    s = socket.create_connection((host, port), timeout=10)
    t = ctx.wrap_socket(s, server_hostname=name, session=session)
    return t


def echo_line(t, msg):
    t.sendall(msg.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        d = t.recv(4096)
        if not d:
            break
        buf += d
    return buf.decode(errors="replace").rstrip("\n")


for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "send":
        out = {"ok": False}
        try:
            out.update(version=kept.version(), reused=kept.session_reused, reply=echo_line(kept, arg))
            out["ok"] = True
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out), flush=True)
        continue
    if cmd == "forget":
        session = None
        print(json.dumps({"ok": True}), flush=True)
        continue
    out = {"ok": False}
    try:
        t = connect()
        out.update(version=t.version(), reused=t.session_reused, subject=subject(t))
        if cmd == "open":
            kept = t
            out["ok"] = True
            print(json.dumps(out), flush=True)
            continue
        if cmd in ("echo", "probe"):
            out["reply"] = echo_line(t, arg)
        elif cmd == "get":
            t.sendall(f"GET {arg} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while True:
                d = t.recv(65536)
                if not d:
                    break
                buf += d
            out["reply"] = buf.decode(errors="replace").split("\r\n", 1)[0]
        # TLS 1.3 tickets arrive after the handshake: read them before saving.
        if cmd != "probe":
            session = t.session
        t.close()
        out["ok"] = True
    except Exception as e:  # reported, the test decides
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
