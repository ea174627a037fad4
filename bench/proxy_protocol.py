#!/usr/bin/env python3
"""A/B of the PROXY protocol on keep-alive connections: tollgate's instructions
per proxied request, counted by callgrind, with `proxy_protocol: v2` on its
listener against the same listener with it off.

Usage (what `make bench` runs after bench/run.py):

    python3 bench/proxy_protocol.py --tollgate target/release/tollgate [--requests 4000]
                                    [--rounds 3] [--baseline OTHER_TOLLGATE]

For each arm, tollgate (threads: 1, access log off, one upstream) runs under
callgrind in front of a keep-alive backend of this script (20-byte answers).
10 client connections, which in the `v2` arm each begin with a PROXY v2 header
naming a client of its own (as an NLB or HAProxy `send-proxy-v2` sends it), a
warm-up, the counts dumped, then --requests requests over 10 new connections
(header included), counts dumped again: instructions per request, connections
opened and their headers read included. Arms alternate for --rounds rounds;
the medians are printed with the difference. Scenario `keepalive` is the A/B
the PROXY protocol is held to (--requests / 10 requests on each connection);
scenario `new` opens a connection for every request, so its difference is
what reading one header costs. `--baseline` adds an arm with
another tollgate binary (a build before the PROXY protocol, say) and the
protocol off, to show the cost of the code path itself on listeners without it.

callgrind counts instructions, not time: steady from run to run on a shared
machine where CPU time per request moves by 10%. Needs valgrind (installed
with apt-get when missing). Standard library only; every process it starts is
stopped by PID.
"""

import argparse
import http.server
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

BODY = b"tollgate-bench-small"
CONNECTIONS = 10


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


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


def v2_header(client_index, port):
    """A PROXY v2 header (PROXY command, TCP over IPv4) naming 10.1.0.N as the client."""
    addresses = bytes([10, 1, 0, client_index + 1, 127, 0, 0, 1]) + struct.pack("!HH", 40000 + client_index, port)
    return b"\r\n\r\n\0\r\nQUIT\n\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def load(port, requests, proxy_protocol, per_connection):
    """`requests` GETs, CONNECTIONS at a time, over connections that each carry
    `per_connection` of them (opened with a PROXY v2 header when
    `proxy_protocol`); returns how many were answered."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    done = 0
    while done < requests:
        socks = []
        for i in range(CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            if proxy_protocol:
                s.sendall(v2_header(i, port))
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


def config(tmp, port, backend, proxy_protocol):
    listener = f"    - address: 127.0.0.1:{port}\n"
    if proxy_protocol:
        listener += "      proxy_protocol: v2\n"
    return (f"server:\n  threads: 1\n  listeners:\n{listener}  access_log: off\n"
            f"  pid_file: {tmp}/tollgate.pid\n  upgrade_sock: {tmp}/upgrade.sock\n"
            f"upstreams:\n  app:\n    backends: [{{address: 127.0.0.1:{backend}}}]\n"
            f"routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n")


def measure(tollgate, backend_port, proxy_protocol, requests, per_connection):
    """Instructions per request of one callgrind run of `tollgate`."""
    tmp = tempfile.mkdtemp(prefix="tollgate-pp-bench-")
    port = free_port()
    path = os.path.join(tmp, "tollgate.yaml")
    with open(path, "w") as f:
        f.write(config(tmp, port, backend_port, proxy_protocol))
    out = os.path.join(tmp, "cg.out")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", tollgate, "-c", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port, 120):
            raise SystemExit(f"tollgate did not listen on {port}")
        load(port, max(200, requests // 4), proxy_protocol, per_connection)
        time.sleep(0.5)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        n = load(port, requests, proxy_protocol, per_connection)
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


SCENARIOS = {
    # name: (description, requests per connection; None: all of a run's on one each)
    "keepalive": ("keep-alive", None),
    "new": ("a new connection per request", 1),
}


def run_scenario(args, backend_port, name):
    label, per_connection = SCENARIOS[name]
    per_connection = per_connection or args.requests // CONNECTIONS
    arms = [("off", args.tollgate, False), ("v2", args.tollgate, True)]
    if args.baseline:
        arms.insert(0, ("baseline (other binary), off", args.baseline, False))
    runs = {arm: [] for arm, _, _ in arms}
    for round_no in range(1, args.rounds + 1):
        for arm, binary, proxy_protocol in arms:
            per = measure(binary, backend_port, proxy_protocol, args.requests, per_connection)
            runs[arm].append(per)
            print(f"{label}, round {round_no}: proxy_protocol {arm}: {per:,.0f} instructions/request",
                  flush=True)
    medians = {arm: statistics.median(values) for arm, values in runs.items()}
    print(f"\nPROXY protocol A/B, {label}: {CONNECTIONS} connections at a time, {per_connection} "
          f"request(s) each, {args.requests} requests, median of {args.rounds} "
          f"(callgrind instructions per request):")
    for arm, value in medians.items():
        spread = f"{min(runs[arm]):,.0f}-{max(runs[arm]):,.0f}"
        print(f"  {arm:32} {value:10,.0f}  ({spread})")
    difference = medians["v2"] - medians["off"]
    print(f"  v2 - off: {difference:+,.0f} per request ({difference / medians['off']:+.2%})\n", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tollgate", required=True)
    parser.add_argument("--baseline", help="another tollgate binary, run with the protocol off")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default="keepalive,new",
                        help="keepalive (the A/B), new (a new connection per request: the header's own cost)")
    args = parser.parse_args()
    names = args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown}: expected {', '.join(SCENARIOS)}")
    ensure_valgrind()
    backend_port = free_port()
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", backend_port), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        for name in names:
            run_scenario(args, backend_port, name)
    finally:
        backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
