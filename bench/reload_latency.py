#!/usr/bin/env python3
"""Reload and respawn latency, corral vs nginx in the same run (issue 14's goals).

reload:  SIGHUP to the master -> the new generation is Ready (4 workers). corral: the
         wall-clock time of the master's "reloaded: generation N serving" log line
         (microsecond timestamps), checked against `corral status --json`. nginx has
         no such event: its figure is SIGHUP -> as many new worker processes as
         configured exist (seen in /proc), a lower bound of its real "ready".
respawn: SIGKILL one worker of a fresh 1-worker server -> a request sent right after the
         worker is gone is answered (the listener stays open in the master, so the
         connection waits in the backlog until the new worker accepts it): the time a
         client really waits. corral with 4 workers also gets the log figure (kill ->
         "worker ready slot=N").

Usage: reload_latency.py CORRAL_BIN WORKDIR ROUNDS    (run by bench/reload_latency.sh)
Prints one TSV line per measurement and a summary with medians and the goals.
"""
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

CORRAL, WORK, ROUNDS = sys.argv[1], sys.argv[2], int(sys.argv[3])
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
# RT=1: run the servers (and the floor's /bin/true) under SCHED_FIFO, so that what is
# measured is their own work, not the run queue of a loaded box. Children inherit it.
PRIO = ["chrt", "-f", "10"] if os.environ.get("RT") == "1" else []
started = []


def free_port():
    s = socket.socket()
    for p in range(24000 + os.getpid() % 4000, 32000):
        try:
            s.bind(("127.0.0.1", p))
            s.close()
            return p
        except OSError:
            continue
    raise SystemExit("no free port")


def wait(cond, what, limit=15.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def get(port):
    """One GET on a new connection; seconds to the first response byte, or None on reset."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = s.recv(64)
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


def respawn_once(port, workers_of):
    victim = workers_of()[0]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while not gone(victim):
        pass
    tries = 0
    while not get(port):  # the dying worker may have taken the first one
        tries += 1
        if tries > 50:
            raise SystemExit("no answer after a respawn")
    return (time.monotonic() - t0) * 1000, victim


# ---- corral ---------------------------------------------------------------------------
def corral_start(name, workers, port):
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "c.toml")
    with open(conf, "w") as f:
        f.write(f'[master]\nworkers = {workers}\npid_file = "{d}/corral.pid"\n'
                f'[log]\nlevel = "info"\n[[listen]]\naddress = "127.0.0.1:{port}"\n'
                'service = "http"\n')
    log = open(os.path.join(d, "log"), "w")
    p = subprocess.Popen(["timeout", "--kill-after=5", "300"] + PRIO + [CORRAL, "-c", conf],
                         stdout=log, stderr=subprocess.STDOUT)
    started.append(p)
    pidf = os.path.join(d, "corral.pid")
    wait(lambda: os.path.exists(pidf) and os.path.getsize(pidf) > 0, "corral pid file")
    master = int(open(pidf).read().strip())
    wait(lambda: len(ready_workers(conf)) == workers, "corral workers ready")
    return conf, master, os.path.join(d, "log"), p


def status(conf):
    r = subprocess.run([CORRAL, "status", "--json", "-c", conf], capture_output=True,
                       text=True, timeout=10)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {}


def ready_workers(conf, gen=None):
    st = status(conf)
    return [w for w in st.get("workers", []) if w.get("state") == "ready"
            and (gen is None or w.get("generation") == gen)]


def corral_stop(conf, p):
    subprocess.run([CORRAL, "-s", "stop", "-c", conf], capture_output=True, timeout=60)
    p.wait(timeout=60)


def log_time(logf, pattern, after_line):
    """Wall-clock seconds of the first log line matching pattern after line after_line."""
    with open(logf) as f:
        lines = f.read().splitlines()[after_line:]
    for line in lines:
        if re.search(pattern, line):
            ts = line.split()[0].rstrip("Z")
            return datetime.fromisoformat(ts).replace(tzinfo=timezone.utc).timestamp()
    return None


def nlines(logf):
    with open(logf) as f:
        return len(f.read().splitlines())


def corral_reload(rounds):
    port = free_port()
    conf, master, logf, p = corral_start("reload", 4, port)
    out = []
    try:
        for gen in range(2, rounds + 2):
            n0 = nlines(logf)
            t0 = time.time()
            os.kill(master, signal.SIGHUP)
            wait(lambda: len(ready_workers(conf, gen)) == 4, f"generation {gen} ready")
            t1 = wait(lambda: log_time(logf, rf"reloaded: generation {gen} serving", n0),
                      "the reloaded line")
            out.append((t1 - t0) * 1000)
            tr = log_time(logf, r"received SIGHUP", n0)
            tf = log_time(logf, rf"worker ready .*generation={gen}", n0)
            if tr and tf:
                PHASES.append(((tr - t0) * 1000, (tf - tr) * 1000, (t1 - tf) * 1000))
            time.sleep(0.3)
    finally:
        corral_stop(conf, p)
    return out


PHASES = []  # per corral reload: (signal -> master logs it, -> first new worker ready, -> all ready)


def spawn_floor(rounds):
    """What starting any process costs on this box right now: fork+exec+exit of /bin/true."""
    out = []
    for _ in range(rounds):
        t0 = time.monotonic()
        subprocess.run(PRIO + ["/bin/true"])
        out.append((time.monotonic() - t0) * 1000)
    return out


def corral_respawn(rounds, workers):
    """A fresh server per round: a slot that crashes again within 10 s pays a growing
    backoff (100 ms, doubling), which is supervision policy, not respawn speed."""
    client, logged = [], []
    for r in range(rounds):
        port = free_port()
        conf, master, logf, p = corral_start(f"respawn{workers}-{r}", workers, port)
        try:
            n0 = nlines(logf)
            t0 = time.time()
            if workers == 1:
                ms, victim = respawn_once(port, lambda: children(master))
                client.append(ms)
            else:
                victim = children(master)[0]
                t0 = time.time()
                os.kill(victim, signal.SIGKILL)
            t1 = wait(lambda: log_time(logf, r"worker ready slot=", n0), "respawned worker")
            logged.append((t1 - t0) * 1000)
            wait(lambda: len(ready_workers(conf)) == workers, "all workers ready again")
        finally:
            corral_stop(conf, p)
    return client, logged


# ---- nginx ----------------------------------------------------------------------------
def nginx_start(name, workers, port):
    d = os.path.join(WORK, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"daemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n"
                f"worker_processes {workers};\nevents {{ worker_connections 1024; }}\n"
                f"http {{ access_log off; client_body_temp_path {d};\n"
                f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n")
    p = subprocess.Popen(["timeout", "--kill-after=5", "300"] + PRIO + [NGINX, "-c", conf, "-p", d,
                          "-e", f"{d}/logs/error.log"])
    started.append(p)
    master = wait(lambda: (children(p.pid) or [None])[0], "nginx master")
    wait(lambda: len(children(master)) == workers and get(port), "nginx workers")
    return master, p


def nginx_stop(master, p):
    os.kill(master, signal.SIGTERM)
    p.wait(timeout=60)


def nginx_reload(rounds):
    port = free_port()
    master, p = nginx_start("nginx-reload", 4, port)
    out = []
    try:
        for _ in range(rounds):
            old = set(children(master))
            t0 = time.monotonic()
            os.kill(master, signal.SIGHUP)
            wait(lambda: len(set(children(master)) - old) >= 4, "new nginx workers", 15)
            out.append((time.monotonic() - t0) * 1000)
            wait(lambda: not (set(children(master)) & old), "old nginx workers gone")
            time.sleep(0.3)
    finally:
        nginx_stop(master, p)
    return out


def nginx_respawn(rounds):
    port = free_port()
    master, p = nginx_start("nginx-respawn", 1, port)
    out = []
    try:
        for _ in range(rounds):
            ms, _ = respawn_once(port, lambda: children(master))
            out.append(ms)
            wait(lambda: len(children(master)) == 1, "nginx worker back")
            time.sleep(0.3)
    finally:
        nginx_stop(master, p)
    return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    try:
        cr = corral_reload(ROUNDS)
        nr = nginx_reload(ROUNDS)
        c1, _ = corral_respawn(ROUNDS, 1)
        n1 = nginx_respawn(ROUNDS)
        _, c4 = corral_respawn(ROUNDS, 4)
        floor = spawn_floor(max(ROUNDS, 10))
    finally:
        for p in started:
            if p.poll() is None:
                p.terminate()
    for name, xs in [("corral reload SIGHUP->gen Ready (4w)", cr),
                     ("nginx reload SIGHUP->4 new workers", nr),
                     ("corral respawn kill->answered (1w)", c1),
                     ("nginx respawn kill->answered (1w)", n1),
                     ("corral respawn kill->worker ready log (4w)", c4)]:
        print(f"{name}\t" + " ".join(f"{x:.1f}" for x in xs))
    print()
    print(f"{'measure':44} {'corral ms':>10} {'nginx ms':>10} {'ratio':>6}  goal")
    print(f"{'reload SIGHUP -> new generation ready, 4w':44} {med(cr):10.1f} {med(nr):10.1f} "
          f"{med(cr) / med(nr):6.2f}  <= 50 ms: {'met' if med(cr) <= 50 else 'NOT met'}")
    print(f"{'respawn SIGKILL -> request answered, 1w':44} {med(c1):10.1f} {med(n1):10.1f} "
          f"{med(c1) / med(n1):6.2f}  <= 10 ms: {'met' if med(c1) <= 10 else 'NOT met'}")
    print(f"{'respawn SIGKILL -> worker ready (log), 4w':44} {med(c4):10.1f} {'-':>10} "
          f"{'-':>6}  <= 10 ms: {'met' if med(c4) <= 10 else 'NOT met'}")
    if PHASES:
        a, b, c = (med([ph[i] for ph in PHASES]) for i in range(3))
        print(f"corral reload phases (medians): signal -> master logs it {a:.1f} ms, -> first new "
              f"worker ready {b:.1f} ms, -> all 4 ready {c:.1f} ms")
    print(f"box floor: fork+exec+exit of /bin/true {med(floor):.1f} ms (median), load "
          f"{os.getloadavg()[0]:.1f}{', servers under SCHED_FIFO (RT=1)' if PRIO else ''}")
    print(f"(medians of {ROUNDS} rounds; nginx's reload figure is new processes, not readiness)")


main()
