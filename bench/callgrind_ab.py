"""What the callgrind A/B benches share (bench/proxy_protocol.py,
bench/tracing.py): a keep-alive backend, keep-alive load from 10 client
connections, one callgrind run of tollgate per measurement, and the medians
of alternating arms.

callgrind counts instructions, not time: steady from run to run on a shared
machine where CPU time per request moves by 10%. Every thread of tollgate is
counted (log writers, exporters): that is part of a request's cost. Standard
library only; every process started here is stopped by PID.
"""

import http.server
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

BODY = b"tollgate-bench-small"
CONNECTIONS = 10


class _Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


def start_backend():
    """A keep-alive backend answering BODY on a free port; returns (server, port)."""
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def keepalive_load(port, requests, per_connection, prelude=None, headers=b""):
    """`requests` GETs, CONNECTIONS at a time, over connections that each carry
    `per_connection` of them; `prelude(i, port)`, when given, is sent first
    on connection i (a PROXY header, say); `headers` are extra header lines
    of every request. Returns how many were answered."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n" + headers + b"\r\n"
    done = 0
    while done < requests:
        socks = []
        for i in range(CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            if prelude:
                s.sendall(prelude(i, port))
            socks.append(s)
        for _ in range(per_connection):
            for s in socks:
                s.sendall(request)
            for s in socks:
                answer = b""
                while not answer.endswith(BODY):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise SystemExit("tollgate closed a keep-alive connection")
                    answer += chunk
            done += CONNECTIONS
        for s in socks:
            s.close()
    return done


def totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def base_config(tmp, port, backend, listener_extra="", server_extra=""):
    """One listener (`listener_extra` lines under it), one worker thread,
    access log off, every request to `backend`."""
    return (f"server:\n  threads: 1\n  listeners:\n    - address: 127.0.0.1:{port}\n{listener_extra}"
            f"  access_log: off\n  pid_file: {tmp}/tollgate.pid\n  upgrade_sock: {tmp}/upgrade.sock\n"
            f"{server_extra}"
            f"upstreams:\n  app:\n    backends: [{{address: 127.0.0.1:{backend}}}]\n"
            f"routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n")


def measure(tollgate, config_of, load, requests):
    """Instructions per request of one callgrind run of `tollgate` on the
    config `config_of(tmp, port)`: a warm-up of `load(port, n)`, counts
    dumped, `load(port, requests)`, counts dumped again."""
    tmp = tempfile.mkdtemp(prefix="tollgate-cg-bench-")
    port = free_port()
    path = os.path.join(tmp, "tollgate.yaml")
    with open(path, "w") as f:
        f.write(config_of(tmp, port))
    out = os.path.join(tmp, "cg.out")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", tollgate, "-c", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port, 120):
            raise SystemExit(f"tollgate did not listen on {port}")
        load(port, max(200, requests // 4))
        time.sleep(0.5)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        n = load(port, requests)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        deadline = time.time() + 30
        while time.time() < deadline and not os.path.exists(f"{out}.2"):
            time.sleep(0.2)
        time.sleep(1)
        return totals(f"{out}.2") / n
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_valgrind():
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing: valgrind", flush=True)
    for argv in (sudo + ["apt-get", "update", "-qq"], sudo + ["apt-get", "install", "-y", "-qq", "valgrind"]):
        if subprocess.run(argv, env=env).returncode != 0:
            raise SystemExit("apt-get failed: install valgrind and run again")


def alternate(arms, rounds, label):
    """Runs `arms` ([(name, measure_fn)]) in turn for `rounds` rounds; prints
    each run and the medians, and returns {name: median}."""
    runs = {name: [] for name, _ in arms}
    for round_no in range(1, rounds + 1):
        for name, run in arms:
            per = run()
            runs[name].append(per)
            print(f"{label}, round {round_no}: {name}: {per:,.0f} instructions/request", flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, value in medians.items():
        spread = f"{min(runs[name]):,.0f}-{max(runs[name]):,.0f}"
        print(f"  {name:36} {value:10,.0f}  ({spread})")
    return medians
