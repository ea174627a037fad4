"""HTTP/3 against HTTP/2 on the same route of the same tollgate (`make bench`).

tollgate (the release build) listens with `http3: true` and `tls.http2: true`
in front of the demo backend; the same GET of /small is loaded over HTTP/2 by
h2load and over HTTP/3 by tests/python/h3_client.py (aioquic), with the same
connections and requests in flight. Reported: requests/s and tollgate's CPU
time per request (user + system, from /proc), for both. aioquic is pure
Python: on a small machine it, not tollgate, limits the HTTP/3 requests/s, so
the CPU per request is the figure that compares the two servers' paths.

usage: bench/http3.py --tollgate target/release/tollgate [--duration 10]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, "target/python/bin/python3")
CLIENT = os.path.join(ROOT, "tests/python/h3_client.py")
CONNECTIONS = 4
STREAMS = 16


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start(tmp, tollgate):
    """The demo backend (the example built beside `tollgate`) and tollgate in
    front of it; their processes, tollgate's port and its certificate."""
    backend_port, port = free_port(), free_port()
    demo = os.path.join(os.path.dirname(os.path.abspath(tollgate)), "examples/tollgate-demo-backend")
    backend = subprocess.Popen([demo, "--listen", f"127.0.0.1:{backend_port}", "--name", "b"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    backend.stdout.readline()
    crt, key = os.path.join(tmp, "c.crt"), os.path.join(tmp, "c.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    conf = os.path.join(tmp, "tollgate.yaml")
    with open(conf, "w") as f:
        f.write(f"""server:
  threads: 1
  listeners:
    - address: 127.0.0.1:{port}
      http3: true
      tls: {{http2: true, certificates: [{{cert: {crt}, key: {key}}}]}}
  access_log: off
  pid_file: {tmp}/tollgate.pid
  upgrade_sock: {tmp}/upgrade.sock
upstreams:
  app:
    backends: [{{address: 127.0.0.1:{backend_port}}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
""")
    proxy = subprocess.Popen([tollgate, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return backend, proxy, port, crt


def run_h2(port, crt, duration):
    out = subprocess.run(["h2load", "-t1", f"-c{CONNECTIONS}", f"-m{STREAMS}", f"-D{duration}",
                          f"https://localhost:{port}/small"],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done:
        raise RuntimeError(f"h2load printed no result:\n{out}")
    return int(done.group(2)), int(done.group(1)) - int(done.group(2))


def run_h3(port, crt, duration):
    out = subprocess.run([PYTHON, CLIENT, f"127.0.0.1:{port}", "load", str(duration), "--ca", crt,
                          "--connections", str(CONNECTIONS), "--concurrency", str(STREAMS),
                          "--path", "/small"],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    report = json.loads(out)
    return report["ok"], report["failed"]


def measure(pid, run, port, crt, duration):
    run(port, crt, 2)  # warm up
    ticks, started = cpu_ticks(pid), time.monotonic()
    ok, failed = run(port, crt, duration)
    seconds = time.monotonic() - started
    cpu_ms = (cpu_ticks(pid) - ticks) * 1000.0 / os.sysconf("SC_CLK_TCK")
    return {"requests_per_s": ok / seconds, "cpu_us_per_request": cpu_ms * 1000.0 / max(ok, 1),
            "requests": ok, "failed": failed}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tollgate", required=True)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        print("http3 bench skipped: h2load is missing (apt-get install nghttp2-client)")
        return 0
    tmp = tempfile.mkdtemp(prefix="tollgate-h3-bench-")
    backend, proxy, port, crt = start(tmp, args.tollgate)
    try:
        rows = [("HTTP/2 (h2load)", measure(proxy.pid, run_h2, port, crt, args.duration)),
                ("HTTP/3 (aioquic)", measure(proxy.pid, run_h3, port, crt, args.duration))]
    finally:
        proxy.terminate()
        backend.terminate()
        proxy.wait()
        backend.wait()
    lines = [f"HTTP/3 against HTTP/2, GET /small through tollgate (1 thread) to the demo backend, "
             f"{CONNECTIONS} connections x {STREAMS} requests in flight, {args.duration} s:",
             f"{'client':<18} {'requests/s':>11} {'CPU/request':>12} {'failed':>7}"]
    for name, r in rows:
        lines.append(f"{name:<18} {r['requests_per_s']:>11.0f} {r['cpu_us_per_request']:>9.1f} us "
                     f"{r['failed']:>7}")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/http3.txt"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
