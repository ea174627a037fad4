#!/usr/bin/env python3
"""Side-by-side benchmark of tollgate, nginx and HAProxy on loopback.

Usage (what `make bench` runs):

    python3 bench/run.py --tollgate target/release/tollgate [--rounds 3] [--duration 10]
                         [--quick] [--pin] [--only a,e] [--floor PATH]

One nginx process with one worker serves two backend ports (a 20-byte body at
/small, a 64 KiB file at /large, a 1 MiB file at /mib). Three proxies, each with
one worker thread and keep-alive to both backends, balance over them round
robin: tollgate, nginx and HAProxy. For the cache scenarios, tollgate with a
memory cache and nginx with `proxy_cache` (sendfile on) serve stored answers. wrk loads each proxy in interleaved rounds per scenario; the medians of
requests/s, latency percentiles and the proxy's CPU time per request are
printed, with the proxies' memory holding 10,000 idle client connections.
Results go to bench/results/latest.json and bench/results/latest.svg.

Scenarios (a) and (e) also load the floor: a bare pingora proxy to one fixed
backend with tollgate's allocator and release profile
(target/release/examples/pingora-floor, from examples/pingora_floor.rs), and
tollgate with its production features on (tollgate full), whose CPU time per
request is checked against the floor's.

Scenario (k) balances over three demo backends instead
(target/release/examples/tollgate-demo-backend, built by `cargo build --release
--examples`), one of them 20 times slower than the other two: tollgate
`least_time` against tollgate `least_connections` and nginx `least_conn`, with
the share of answers the slow backend gave and the issue's two targets checked.

Scenario (l) measures upstream connection reuse: tollgate with two threads
(pingora keeps one upstream connection pool for the process) against nginx with
two workers (a keep-alive cache per worker), round robin over 20 ports of a
second backend nginx that closes connections idle for 5 s. 200 keep-alive
client connections each send a request after exponentially distributed pauses
(mean 25 s, so about 8 requests/s in all, a steady Poisson stream with no
opening burst; this script is the client, not wrk). The backend's stub_status
`accepts` counter, read before and after each run, gives the new upstream
connections per 1,000 requests; the target is tollgate at most half of nginx's.

Scenario (m) makes gRPC unary calls over cleartext HTTP/2 (h2c) with h2load
(Debian's nghttp2-client; a fixed request: the 5-byte gRPC prefix and a
20-byte message, `content-type: application/grpc`, `te: trailers`) to a Python
grpcio server (tests/python/grpc_server.py, from the virtualenv `make pydeps`
builds in target/python): direct, through tollgate (`h2c: true` listener,
`protocol: h2c` upstream) and through nginx `grpc_pass` (upstream keep-alive).
It reports calls/s, latency percentiles from h2load's per-request log, and
CPU per call of the proxy (direct: of the gRPC server itself); the target is
tollgate's CPU per call at most nginx's.

Every server is a child process of this script, with its configuration in a
temporary directory and on loopback ports picked here; all are stopped by PID at
the end, on Ctrl-C and on errors. Standard library only.
"""

import argparse
import errno
import html
import heapq
import http.client
import json
import math
import os
import platform
import resource
import random
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

SMALL_BODY = b"tollgate-bench-small"  # 20 bytes
LARGE_SIZE = 64 * 1024
MIB_SIZE = 1024 * 1024
IDLE_CONNECTIONS = 10_000
WARMUP_SECONDS = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")

# command -> Debian package that provides it
PACKAGES = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "ab": "apache2-utils",
    "openssl": "openssl",
    "taskset": "util-linux",
    "redis-server": "redis-server",
    "h2load": "nghttp2-client",
}

PROXIES = ("tollgate", "nginx", "haproxy")
# The floor: a bare pingora proxy (examples/pingora_floor.rs), in (a) and (e)
# beside tollgate, tollgate full, nginx and HAProxy.
FLOOR = "pingora-floor"
FLOOR_PROXIES = ("tollgate", "tollgate-full", FLOOR, "nginx", "haproxy")
LABELS = {
    "tollgate": "tollgate",
    FLOOR: "pingora floor",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "tollgate-full": "tollgate full",
    "tollgate-cache": "tollgate cache",
    "nginx-cache": "nginx cache",
    "tollgate-cluster": "tollgate cluster",
    "tollgate-limit": "tollgate local",
    "tollgate-least-time": "tollgate least_time",
    "tollgate-least-conn": "tollgate least_conn",
    "nginx-least-conn": "nginx least_conn",
    "tollgate-2t": "tollgate 2 threads",
    "nginx-2w": "nginx 2 workers",
    "grpc-direct": "direct (no proxy)",
    "tollgate-grpc": "tollgate h2c",
    "nginx-grpc": "nginx grpc_pass",
}
COLORS = {
    "tollgate": "#e8590c",
    "nginx": "#2f9e44",
    "haproxy": "#1c7ed6",
    FLOOR: "#495057",
    "tollgate-full": "#f5b041",
    "tollgate-cache": "#c2255c",
    "nginx-cache": "#66a80f",
    "tollgate-cluster": "#7048e8",
    "tollgate-limit": "#adb5bd",
    "tollgate-least-time": "#f08c00",
    "tollgate-least-conn": "#1098ad",
    "nginx-least-conn": "#94d82d",
    "tollgate-2t": "#d9480f",
    "nginx-2w": "#2b8a3e",
    "grpc-direct": "#868e96",
    "tollgate-grpc": "#e8590c",
    "nginx-grpc": "#2f9e44",
}
# Ratio column headers where "first word / first word" of the labels says too little.
RATIO_LABELS = {
    ("tollgate-cache", "nginx-cache"): "tg/nginx",
    ("tollgate-cluster", "tollgate-limit"): "cluster/local",
    ("tollgate-least-time", "tollgate-least-conn"): "time/conn",
    ("tollgate-least-time", "nginx-least-conn"): "tg/nginx",
    ("tollgate", "nginx"): "tg/nginx",
    ("tollgate-2t", "nginx-2w"): "tg/nginx",
    ("tollgate-grpc", "nginx-grpc"): "tg/nginx",
    ("tollgate-grpc", "grpc-direct"): "tg/direct",
    ("tollgate", "haproxy"): "tg/HAProxy",
    ("tollgate", FLOOR): "tg/floor",
    ("tollgate-full", FLOOR): "tg-full/floor",
}
# The ratio columns of (a) and (e): tollgate's to nginx's and HAProxy's as in
# the other scenarios, then tollgate's and tollgate full's to the floor's.
FLOOR_RATIOS = (("tollgate", "nginx"), ("tollgate", "haproxy"), ("tollgate", FLOOR),
                ("tollgate-full", FLOOR))

# Scenario (k): the demo backends (name, added delay in ms), one 20 times slower.
SLOW_BACKEND = "slow"
DEMO_BACKENDS = (("fast-1", 2), ("fast-2", 2), (SLOW_BACKEND, 40))
LEAST_PROXIES = ("tollgate-least-time", "tollgate-least-conn", "nginx-least-conn")

# Scenario (l): 20 backend ports that close connections idle this long, behind
# tollgate with two threads and nginx with two workers.
REUSE_BACKENDS = 20
REUSE_IDLE_S = 5
REUSE_PROXIES = ("tollgate-2t", "nginx-2w")

# Scenario (m): gRPC unary calls to the Python grpcio server of the tests,
# direct and through tollgate and nginx; h2load's connections and the streams
# each keeps open at once.
GRPC_PROXIES = ("tollgate-grpc", "nginx-grpc", "grpc-direct")
GRPC_METHOD = "/tollgate.test.Echo/Bench"  # answers its request as it is
GRPC_MESSAGE = SMALL_BODY
GRPC_STREAMS = 10
REPO_DIR = os.path.dirname(BENCH_DIR)
GRPC_PYTHON = os.path.join(REPO_DIR, "target", "python", "bin", "python3")
GRPC_SERVER = os.path.join(REPO_DIR, "tests", "python", "grpc_server.py")
GRPC_CLIENT = os.path.join(REPO_DIR, "tests", "python", "grpc_client.py")

# wrk's done() hook: one machine-readable line with the figures we keep.
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p99":%d,"p999":%d,"max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""

# Appended to WRK_LUA where a scenario counts answers per backend: each thread
# counts the X-Backend header of its answers (wrk's response() hook), and done()
# adds the threads' counts up and prints them on a BACKENDS line.
WRK_COUNT_LUA = r"""
local report = done
local threads = {}
setup = function(thread) table.insert(threads, thread) end
counts = {}
response = function(status, headers, body)
  local name = headers["x-backend"] or headers["X-Backend"] or "none"
  counts[name] = (counts[name] or 0) + 1
end
done = function(summary, latency, requests)
  report(summary, latency, requests)
  local total, parts = {}, {}
  for _, thread in ipairs(threads) do
    for name, n in pairs(thread:get("counts")) do total[name] = (total[name] or 0) + n end
  end
  for name, n in pairs(total) do table.insert(parts, string.format('"%s":%d', name, n)) end
  io.write('BACKENDS {' .. table.concat(parts, ",") .. '}\n')
end
"""


class BenchError(Exception):
    """A failure that ends the benchmark with a message and exit status 1."""


@dataclass(frozen=True)
class Scenario:
    """One load pattern, run against each of `proxies` in interleaved rounds."""

    key: str
    title: str
    path: str = "/small"
    connections: int = 50
    close: bool = False
    tls: bool = False
    proxies: tuple = PROXIES
    # Each connection waits this long after an answer before its next request
    # (wrk's delay() hook): a load below saturation, whose latency is the
    # proxy's own rather than queueing.
    pause_ms: int = 0
    # Count the answers per backend (X-Backend) and report the slow one's share.
    count_backends: bool = False
    # Goals checked on the medians and printed under the scenario's table.
    targets: tuple = ()
    # The ratio columns, (proxy, other) pairs; by default the first proxy's
    # ratio to each of the others.
    ratios: tuple = ()
    # Upstream reuse (l): the proxies balance over the REUSE_BACKENDS ports that
    # close idle connections; this script loads them itself, each connection
    # pausing an exponentially distributed time of mean `pause_ms` before every
    # request (its first too), and the new backend connections are counted.
    reuse: bool = False
    # Seconds of load per run at least, whatever --duration (not with --quick).
    min_duration: int = 0
    # gRPC unary calls (GRPC_METHOD) with h2load over h2c instead of wrk.
    grpc: bool = False


@dataclass(frozen=True)
class Target:
    """A goal: `proxy`'s median `figure` at most `factor` times `other`'s."""

    figure: str
    proxy: str
    other: str
    factor: float
    text: str


# Issue 19's target 1: tollgate with its production features costs at most 5%
# more CPU per request than the bare pingora proxy.
FLOOR_TARGETS = (
    Target("cpu_us_per_request", "tollgate-full", FLOOR, 1.05,
           "tollgate full CPU/request at most 1.05x the pingora floor's"),
)

SCENARIOS = (
    Scenario("a", "/small, keep-alive, 50 connections", proxies=FLOOR_PROXIES,
             targets=FLOOR_TARGETS, ratios=FLOOR_RATIOS),
    Scenario("b", "/large (64 KiB), keep-alive, 50 connections", path="/large"),
    Scenario("c", "/small, new connection per request, 50 connections", close=True),
    Scenario("d", "/small, keep-alive, 1,000 connections", connections=1000),
    Scenario("e", "TLS termination (HTTP/1.1), /small, keep-alive, 50 connections", tls=True,
             proxies=FLOOR_PROXIES, targets=FLOOR_TARGETS, ratios=FLOOR_RATIOS),
    Scenario(
        "f",
        "tollgate with metrics, JSON access log, health checks, rate limit vs bare (load a)",
        proxies=("tollgate-full", "tollgate"),
    ),
    Scenario(
        "g",
        "cache hits, /small, keep-alive, 50 connections: tollgate cache vs nginx proxy_cache",
        proxies=("tollgate-cache", "nginx-cache"),
    ),
    Scenario(
        "h",
        "cache hits, /mib (1 MiB), keep-alive, 10 connections: tollgate cache vs nginx proxy_cache",
        path="/mib",
        connections=10,
        proxies=("tollgate-cache", "nginx-cache"),
    ),
    Scenario(
        "i",
        "rate limit shared in Redis on loopback (scope: cluster) vs local, load a",
        proxies=("tollgate-cluster", "tollgate-limit"),
    ),
    Scenario(
        "j",
        "rate limit shared in Redis vs local below saturation: 20 connections, 5 ms pause each",
        connections=20,
        pause_ms=5,
        proxies=("tollgate-cluster", "tollgate-limit"),
    ),
    Scenario(
        "k",
        "one backend of three 20x slower (2/2/40 ms), keep-alive, 50 connections: "
        "tollgate least_time vs least_connections vs nginx least_conn",
        proxies=LEAST_PROXIES,
        count_backends=True,
        targets=(
            Target("p99_us", "tollgate-least-time", "nginx-least-conn", 0.5,
                   "tollgate least_time p99 at most half of nginx least_conn's"),
            Target("p99_ab_us", "tollgate-least-time", "nginx-least-conn", 0.5,
                   "the same, p99 as ab measures it"),
            Target("cpu_us_per_request", "tollgate-least-time", "tollgate-least-conn", 1.05,
                   "tollgate least_time CPU/request at most tollgate least_connections' + 5%"),
        ),
    ),
    # 200 connections pausing 25 s on average: ~8 requests/s, so round robin
    # gives each backend a request every 2.5 s on average in tollgate (one pool
    # for both threads) and every 5 s within each nginx worker (a pool each):
    # the backends' 5 s idle timeout falls between the two.
    Scenario(
        "l",
        f"upstream reuse: 200 keep-alive connections at ~8 req/s (25 s mean pauses) over "
        f"{REUSE_BACKENDS} backends closing idle connections after {REUSE_IDLE_S} s: "
        f"tollgate 2 threads vs nginx 2 workers",
        connections=200,
        pause_ms=25_000,
        reuse=True,
        min_duration=30,
        proxies=REUSE_PROXIES,
        targets=(
            Target("new_conns_per_1k", "tollgate-2t", "nginx-2w", 0.5,
                   "tollgate new upstream connections per 1,000 requests at most half of nginx's"),
        ),
    ),
    # (m): `connections` h2load connections, GRPC_STREAMS calls in flight on each.
    Scenario(
        "m",
        f"gRPC unary calls over h2c ({len(GRPC_MESSAGE)}-byte message), 10 connections x "
        f"{GRPC_STREAMS} streams, Python grpcio server: tollgate vs nginx grpc_pass vs direct "
        f"(direct: the server's own CPU)",
        connections=10,
        proxies=GRPC_PROXIES,
        grpc=True,
        ratios=(("tollgate-grpc", "nginx-grpc"), ("tollgate-grpc", "grpc-direct")),
        targets=(
            Target("cpu_us_per_request", "tollgate-grpc", "nginx-grpc", 1.0,
                   "tollgate CPU per gRPC call at most nginx grpc_pass's"),
        ),
    ),
)

FIGURES = (
    ("rps", "requests/s"),
    ("p50_us", "p50 latency µs"),
    ("p99_us", "p99 latency µs"),
    ("p999_us", "p99.9 latency µs"),
    ("cpu_us_per_request", "proxy CPU µs/request"),
    ("mib_per_s", "MiB/s received"),
)
SHARE_FIGURE = ("slow_share_pct", f"% answers from {SLOW_BACKEND}")
# Where the backends are counted (k), a second client measures the latency
# again: ab, one thread, per-request times. Under wrk's two threads on this
# 2-core VM, wrk's own scheduling delays show in its upper percentiles (wrk
# saw p95 of 13 ms where tollgate's own histogram had 99.4% of answers under
# 10 ms), which hides a tail that comes from the backends.
AB_FIGURE = ("p99_ab_us", "p99 latency µs (ab)")
# (l): connections the backends accepted per 1,000 requests the client completed.
REUSE_FIGURE = ("new_conns_per_1k", "new upstream conns/1k req")
FIGURE_LABELS = dict(FIGURES + (SHARE_FIGURE, AB_FIGURE, REUSE_FIGURE))


def scenario_figures(scenario):
    """The figures kept for `scenario`: FIGURES, the slow backend's share where counted,
    the new upstream connections where reuse is measured."""
    return (FIGURES + ((SHARE_FIGURE, AB_FIGURE) if scenario.count_backends else ())
            + ((REUSE_FIGURE,) if scenario.reuse else ()))


# ---------------------------------------------------------------------------
# Environment


def ensure_packages():
    """Install the Debian packages of any missing command (apt-get, through sudo unless root)."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing: {' '.join(missing)}", flush=True)
    for argv in (sudo + ["apt-get", "update", "-qq"], sudo + ["apt-get", "install", "-y", "-qq"] + missing):
        if subprocess.run(argv, env=env).returncode != 0:
            raise BenchError(f"`{' '.join(argv)}` failed; install {' '.join(missing)} and run again")


def raise_nofile():
    """Raise this process's open-file limit to its hard limit; the servers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_ports(count):
    """Return `count` distinct free TCP ports on 127.0.0.1 (held open together while picked)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def command_output(argv):
    """The first line of a command's combined output, or `unknown` when it cannot run."""
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = out.strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def nginx_version():
    """nginx's version as a tuple of ints, e.g. (1, 22, 1)."""
    text = command_output(["nginx", "-v"])
    number = text.rsplit("/", 1)[-1].split()[0]
    return tuple(int(part) for part in number.split(".") if part.isdigit())


def machine_info(tollgate):
    """What the results depend on: cores, kernel, CPU model and the versions of every tool."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tollgate": command_output([tollgate, "-V"]),
        "nginx": command_output(["nginx", "-v"]),
        "haproxy": command_output(["haproxy", "-v"]),
        "wrk": command_output(["wrk", "-v"]),
        "openssl": command_output(["openssl", "version"]),
        "somaxconn": int(open("/proc/sys/net/core/somaxconn").read()),
    }


# ---------------------------------------------------------------------------
# Processes


def process_stat(pid):
    """The fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_tree(pid):
    """`pid` and all its descendants (for nginx: the master and its worker)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(process_stat(entry)[1]), []).append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def start_time(pid):
    """When the process started (field 22 of /proc/PID/stat, clock ticks after boot)."""
    return int(process_stat(pid)[19])


def cpu_ticks(pids):
    """utime + stime (fields 14 and 15 of /proc/PID/stat) summed over `pids`, in clock ticks."""
    total = 0
    for pid in pids:
        fields = process_stat(pid)
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pids):
    """VmRSS summed over `pids`, in KiB."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class Server:
    """A server process started by the harness, in its own session, logging to a file."""

    def __init__(self, name, argv, log_path, stop_signal=signal.SIGTERM, env=None):
        """Remember how to start `argv`; nothing runs until start()."""
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.env = env
        self.popen = None
        self.pids = []

    def start(self, ports):
        """Start the process and wait until every port in `ports` accepts connections."""
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                if self.popen.poll() is not None:
                    raise BenchError(f"{self.name} exited with status {self.popen.returncode} at start\n"
                                     f"{self.log_tail()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{self.name} does not listen on 127.0.0.1:{port} after 15 s\n"
                                         f"{self.log_tail()}")
                    time.sleep(0.05)

    def restart(self, ports):
        """Stop the process and start it again: a fresh process, as after start()."""
        self.stop()
        self.start(ports)

    def tree(self):
        """The PIDs of the process and its children, remembered for stop()."""
        self.check_alive()
        self.pids = process_tree(self.popen.pid)
        return self.pids

    def check_alive(self):
        """Raise BenchError when the process has exited."""
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}")

    def log_tail(self, lines=15):
        """The last lines of the process's log, indented, for error messages."""
        try:
            with open(self.log_path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"    {self.name}| {line}" for line in tail)

    def stop(self):
        """Stop the process by PID (its stop signal, then SIGKILL after 10 s) and any child left.

        A child is killed only while its start time shows it is still the process
        seen before the stop, never a new process that reused its PID.
        """
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.pids = process_tree(self.popen.pid)
        children = {}
        for pid in self.pids:
            if pid != self.popen.pid:
                try:
                    children[pid] = start_time(pid)
                except FileNotFoundError:
                    continue
        if self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid, started in children.items():
            try:
                if start_time(pid) == started:
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


@dataclass
class Proxy:
    """A proxy under test: its server process and the ports it serves HTTP (and TLS) on."""

    name: str
    server: Server
    port: int
    tls_port: int = 0
    # (l): the stub_status port of the backends this proxy balances over.
    status_port: int = 0

    def url(self, scenario):
        """The URL wrk (h2load for gRPC) loads for `scenario`."""
        if scenario.grpc:
            return f"http://127.0.0.1:{self.port}{GRPC_METHOD}"
        if scenario.tls:
            return f"https://127.0.0.1:{self.tls_port}{scenario.path}"
        return f"http://127.0.0.1:{self.port}{scenario.path}"


# ---------------------------------------------------------------------------
# Configuration files


def make_certificate(tmp):
    """A self-signed RSA certificate for localhost / 127.0.0.1: (cert, key, cert+key PEM) paths."""
    crt, key, pem = (os.path.join(tmp, name) for name in ("tls.crt", "tls.key", "tls.pem"))
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-keyout", key, "-out", crt, "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0:
        raise BenchError(f"openssl could not make the test certificate:\n{result.stdout}")
    with open(pem, "w") as out:
        out.write(open(crt).read() + open(key).read())
    return crt, key, pem


def nginx_temp_paths(tmp, name):
    """nginx's temporary-file directives, all under `tmp` (Debian compiles in /var/lib/nginx)."""
    return "\n".join(f"    {kind}_temp_path {tmp}/{name}-temp-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def nginx_conf(tmp, name, nofile, http, workers=1):
    """A whole nginx configuration with `workers` worker(s), its pid, error log and
    temporary files under `tmp` as `name`, no access log, and `http` inside the http block."""
    return f"""
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections {max(20000, nofile)}; }}
http {{
{nginx_temp_paths(tmp, name)}
    access_log off;
{http}
}}
"""


def backend_conf(tmp, ports, nofile):
    """nginx backend: one worker, a server block per port with /small (20 B), /large
    (64 KiB) and /mib (1 MiB)."""
    servers = "".join(f"""
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.decode()}"; }}
        location = /large {{ default_type application/octet-stream; root {tmp}/www; }}
        location = /mib {{ default_type application/octet-stream; root {tmp}/www; }}
    }}""" for port in ports)
    return nginx_conf(tmp, "backend", nofile, f"""    sendfile on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
{servers}""")


def nginx_balancer_http(port, backends, balance="", http_extra="", server_extra="",
                        location_extra=""):
    """The http block of nginx as a proxy: an upstream over `backends` (with the
    `balance` directive, round robin when empty) keeping 64 idle connections per
    worker, and a server on `port` proxying every path to it; the `*_extra`
    lines go into the http block, the server and the location."""
    servers = "".join(f"\n        server 127.0.0.1:{b};" for b in backends)
    balance = f"\n        {balance}" if balance else ""
    return f"""    keepalive_requests 10000000;{http_extra}
    upstream app {{{balance}{servers}
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=65535;{server_extra}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{location_extra}
        }}
    }}"""


def nginx_proxy_conf(tmp, port, tls_port, backends, crt, key, nofile):
    """nginx as proxy: one worker, upstream keep-alive (64 idle), TLS + HTTP/2 on `tls_port`."""
    if nginx_version() >= (1, 25, 1):
        tls_listen = f"listen 127.0.0.1:{tls_port} ssl backlog=65535;\n        http2 on;"
    else:
        tls_listen = f"listen 127.0.0.1:{tls_port} ssl http2 backlog=65535;"
    tls = f"""
        {tls_listen}
        ssl_certificate {crt};
        ssl_certificate_key {key};"""
    return nginx_conf(tmp, "nginx", nofile, nginx_balancer_http(port, backends, server_extra=tls))


def nginx_cache_conf(tmp, port, backends, nofile):
    """nginx with proxy_cache: one worker, every 200 kept an hour on disk (the page
    cache holds it), hits sent with sendfile."""
    cache_path = f"""
    sendfile on;
    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=pages:10m max_size=1g
                     inactive=60m use_temp_path=off;"""
    cache = """
            proxy_cache pages;
            proxy_cache_valid 200 1h;"""
    return nginx_conf(tmp, "nginx-cache", nofile, nginx_balancer_http(
        port, backends, http_extra=cache_path, location_extra=cache))


def nginx_least_conn_conf(tmp, port, backends, nofile):
    """nginx balancing `least_conn`: one worker, upstream keep-alive (64 idle), for scenario (k)."""
    return nginx_conf(tmp, "nginx-least-conn", nofile,
                      nginx_balancer_http(port, backends, balance="least_conn;"))


def reuse_backend_conf(tmp, ports, status_port, nofile):
    """nginx backend of (l): one worker, /small on each of `ports`, idle keep-alive
    connections closed after REUSE_IDLE_S, and stub_status at /status on `status_port`."""
    servers = "".join(f"""
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.decode()}"; }}
    }}""" for port in ports)
    return nginx_conf(tmp, "backend-reuse", nofile, f"""    keepalive_requests 10000000;
    keepalive_timeout {REUSE_IDLE_S}s;
{servers}
    server {{
        listen 127.0.0.1:{status_port};
        location = /status {{ stub_status; }}
    }}""")


def nginx_reuse_conf(tmp, port, backends, nofile):
    """nginx of (l): two workers, round robin, upstream keep-alive (64 idle per worker) as nginx_proxy_conf."""
    return nginx_conf(tmp, "nginx-2w", nofile, nginx_balancer_http(port, backends), workers=2)


def nginx_grpc_conf(tmp, port, backend, nofile):
    """nginx as a gRPC proxy: one worker, h2c on `port`, `grpc_pass` to the gRPC
    server on `backend` with upstream keep-alive (64 idle)."""
    return nginx_conf(tmp, "nginx-grpc", nofile, f"""    keepalive_requests 10000000;
    http2_max_requests 10000000;
    upstream grpc_app {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=65535;
        location / {{ grpc_pass grpc://grpc_app; }}
    }}""")


def tollgate_grpc_conf(tmp, port, backend):
    """tollgate as a gRPC proxy: one thread, an `h2c: true` listener on `port`,
    one `protocol: h2c` upstream: the gRPC server on `backend`."""
    return (f"server:\n  threads: 1\n  listeners:\n    - address: 127.0.0.1:{port}\n      h2c: true\n"
            f"  access_log: off\n  pid_file: {tmp}/tollgate-grpc.pid\n"
            f"  upgrade_sock: {tmp}/tollgate-grpc-upgrade.sock\n"
            f"upstreams:\n  grpc:\n    protocol: h2c\n    backends:\n      - address: 127.0.0.1:{backend}\n"
            f"routes:\n  - match: {{path_prefix: /}}\n    upstream: grpc\n")


def haproxy_conf(port, tls_port, backends, pem):
    """HAProxy: one thread, http-reuse always, round robin, TLS with ALPN h2,http/1.1.

    maxconn 20000 wants about 40,000 descriptors; `no strict-limits` lets HAProxy
    run (with a warning) where the hard RLIMIT_NOFILE is lower and cannot be raised.
    """
    servers = "".join(f"\n    server b{i} 127.0.0.1:{b}" for i, b in enumerate(backends, 1))
    return f"""
global
    nbthread 1
    maxconn 20000
    no strict-limits

defaults
    mode http
    maxconn 20000
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{port}
    bind 127.0.0.1:{tls_port} ssl crt {pem} alpn h2,http/1.1
    default_backend app

backend app
    balance roundrobin{servers}
"""


def tollgate_conf(tmp, name, port, backends, tls=None, metrics_port=None, cache=False,
                  limit_scope=None, redis_port=None, algorithm="round_robin", threads=1):
    """tollgate topology: `threads` thread(s), `algorithm` (round robin) over `backends`.

    `tls` = (tls_port, cert, key) adds a TLS listener with HTTP/2; `metrics_port`
    turns the production features on: metrics, a JSON access log to a file,
    active health checks and a rate limit too high to trigger; `cache` keeps
    every 200 an hour in a memory cache, as nginx_cache_conf does; `limit_scope`
    (local or cluster, the latter in the Redis on `redis_port`) puts every
    request through a per-client rate limit too high to trigger.
    """
    listeners = f"    - address: 127.0.0.1:{port}\n"
    if tls:
        tls_port, crt, key = tls
        listeners += (f"    - address: 127.0.0.1:{tls_port}\n"
                      f"      tls: {{certificates: [{{cert: {crt}, key: {key}}}], http2: true}}\n")
    if metrics_port:
        logging = (f"  metrics: 127.0.0.1:{metrics_port}\n"
                   f"  access_log: {tmp}/{name}-access.log\n"
                   f"  access_log_format: json\n")
        health = "    health_check: {http: {path: /small}, interval: 1s}\n"
        limits = "rate_limits:\n  never: {key: client_ip, rate: 100000000/s, burst: 100000000}\n"
        route_limit = "    rate_limit: never\n"
    else:
        logging = "  access_log: off\n"
        health = limits = route_limit = ""
    if cache:
        limits += "caches:\n  pages: {memory: 256MiB, default_ttl: {200: 1h}}\n"
        route_limit += "    cache: pages\n"
    if limit_scope:
        limits += ("rate_limits:\n  never: {key: client_ip, rate: 1000000/s, burst: 1000000, "
                   f"scope: {limit_scope}}}\n")
        route_limit += "    rate_limit: never\n"
    if redis_port:
        logging += f"  cluster: {{redis: 'redis://127.0.0.1:{redis_port}/0', timeout: 50ms}}\n"
    backend_lines = "".join(f"      - address: 127.0.0.1:{b}\n" for b in backends)
    return (f"server:\n  threads: {threads}\n  listeners:\n{listeners}{logging}"
            f"  pid_file: {tmp}/{name}.pid\n  upgrade_sock: {tmp}/{name}-upgrade.sock\n"
            f"upstreams:\n  app:\n    algorithm: {algorithm}\n    backends:\n{backend_lines}{health}"
            f"{limits}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n{route_limit}")


def write_file(path, text):
    """Write `text` to `path` and return the path."""
    with open(path, "w") as f:
        f.write(text)
    return path


def check_tollgate_conf(tollgate, path):
    """Run `tollgate -t -c path`; raise BenchError with its message when the file is invalid."""
    result = subprocess.run([tollgate, "-t", "-c", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise BenchError(f"tollgate -t rejects {path}:\n{result.stdout}")


# ---------------------------------------------------------------------------
# Checks and load


def tls_context(cafile, alpn):
    """A client TLS context that trusts only the bench certificate `cafile` and offers `alpn`."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(alpn)
    return context


def http_get(port, path, cafile=None):
    """GET `path` over HTTP/1.1 from 127.0.0.1:port, over TLS when `cafile` is given: (status, body)."""
    if cafile:
        context = tls_context(cafile, ["http/1.1"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def speaks_h2(port, cafile):
    """True when a TLS listener offered h2 and http/1.1 picks h2 and answers the preface with SETTINGS."""
    context = tls_context(cafile, ["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            if tls.selected_alpn_protocol() != "h2":
                return False
            settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS frame
            goaway = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8)  # GOAWAY, no error
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
            frame_head = tls.recv(9)
            tls.sendall(goaway)
            return len(frame_head) == 9 and frame_head[3] == 0x04


def verify_answers(name, port, bodies, tls_port=0, cafile=None):
    """Raise BenchError unless each path of `bodies` answers 200 with its body (also over TLS)."""
    targets = [(port, False)] + ([(tls_port, True)] if tls_port else [])
    for target_port, tls in targets:
        for path, body in bodies.items():
            scheme = "https" if tls else "http"
            try:
                status, got = http_get(target_port, path, cafile if tls else None)
            except (OSError, http.client.HTTPException) as e:
                raise BenchError(f"{name}: GET {scheme}://127.0.0.1:{target_port}{path} failed: {e}")
            if status != 200 or got != body:
                raise BenchError(f"{name}: GET {scheme}://127.0.0.1:{target_port}{path} answered {status} "
                                 f"with {len(got)} bytes; expected 200 with {len(body)}")
    if tls_port:
        try:
            h2 = speaks_h2(tls_port, cafile)
        except OSError as e:
            raise BenchError(f"{name}: HTTP/2 check on 127.0.0.1:{tls_port} failed: {e}")
        if not h2:
            raise BenchError(f"{name}: the TLS listener does not speak HTTP/2 (ALPN h2)")


def verify_grpc(name, port):
    """Raise BenchError unless a gRPC client's GRPC_METHOD call on `port` ends OK
    with its message back (the tests' client, tests/python/grpc_client.py)."""
    argv = [GRPC_PYTHON, GRPC_CLIENT, f"127.0.0.1:{port}", GRPC_METHOD, GRPC_MESSAGE.decode()]
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=30)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines if "message" in line]
    outcome = next((line for line in lines if "code" in line), {})
    if outcome.get("code") != "OK" or messages != [GRPC_MESSAGE.decode()]:
        raise BenchError(f"{name}: the gRPC call {GRPC_METHOD} on 127.0.0.1:{port} failed:\n"
                         f"{result.stdout}")


def start_grpc(tmp, tollgate, pin, nofile, server, ports):
    """Scenario (m): the gRPC server, tollgate and nginx in front of it, each
    checked with a gRPC call. `server` makes a registered Server; `ports` are
    the server's, tollgate's and nginx's. Returns (proxies by name, configurations)."""
    if not os.access(GRPC_PYTHON, os.X_OK):
        raise BenchError(f"{GRPC_PYTHON} is missing: `make pydeps` installs grpcio for scenario (m)")
    backend, tg, ngx = ports
    configs = {
        "tollgate-grpc.yaml": tollgate_grpc_conf(tmp, tg, backend),
        "nginx-grpc.conf": nginx_grpc_conf(tmp, ngx, backend, nofile),
    }
    paths = {name: write_file(os.path.join(tmp, name), text) for name, text in configs.items()}
    check_tollgate_conf(tollgate, paths["tollgate-grpc.yaml"])
    pin_proxy = ["taskset", "-c", "1"] if pin else []
    grpc_argv = [GRPC_PYTHON, GRPC_SERVER, "--listen", f"127.0.0.1:{backend}", "--name", "bench"]
    configs["grpc-server"] = " ".join(grpc_argv)
    proxies = {
        "grpc-direct": Proxy("grpc-direct", server("grpc-direct", grpc_argv), backend),
        "tollgate-grpc": Proxy("tollgate-grpc", server(
            "tollgate-grpc", pin_proxy + [tollgate, "-c", paths["tollgate-grpc.yaml"]],
            signal.SIGINT, dict(os.environ, RUST_LOG="warn")), tg),
        "nginx-grpc": Proxy("nginx-grpc", server("nginx-grpc", pin_proxy + [
            "nginx", "-e", "stderr", "-c", paths["nginx-grpc.conf"], "-p", tmp, "-g", "daemon off;"]),
            ngx),
    }
    for proxy in proxies.values():
        proxy.server.start([proxy.port])
        verify_grpc(proxy.name, proxy.port)
    return proxies, configs


def verify_backend_names(name, port, names, tries=12):
    """Raise BenchError unless `tries` GETs of /small answer 200 with an X-Backend among `names`."""
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/small")
            response = conn.getresponse()
            response.read()
            status, backend = response.status, response.getheader("X-Backend")
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{name}: GET http://127.0.0.1:{port}/small failed: {e}")
        finally:
            conn.close()
        if status != 200 or backend not in names:
            raise BenchError(f"{name}: GET http://127.0.0.1:{port}/small answered {status} from "
                             f"X-Backend {backend!r}; expected 200 from one of {', '.join(names)}")


def run_wrk(url, connections, duration, lua, close, pin):
    """Run wrk (2 threads) against `url`; return the figures its done() hook printed.

    With WRK_COUNT_LUA in the script, the answers per backend are under "backends".
    """
    argv = (["taskset", "-c", "0"] if pin else []) + [
        "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency", "-s", lua]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish within {duration + 60} s")
    figures = None
    for line in result.stdout.splitlines():
        if line.startswith("BENCH "):
            figures = json.loads(line[len("BENCH "):])
        elif line.startswith("BACKENDS ") and figures is not None:
            figures["backends"] = json.loads(line[len("BACKENDS "):])
    if figures is None:
        raise BenchError(f"wrk printed no result for {url}:\n{result.stdout}")
    return figures


def grpc_request_body(tmp):
    """The file h2load sends as every call's body: GRPC_MESSAGE as one gRPC
    message (not compressed, 4-byte big-endian length, the bytes)."""
    path = os.path.join(tmp, "grpc-request.bin")
    with open(path, "wb") as f:
        f.write(b"\0" + len(GRPC_MESSAGE).to_bytes(4, "big") + GRPC_MESSAGE)
    return path


def run_h2load(url, connections, duration, body, log_path, pin):
    """Unary gRPC calls with h2load for `duration` s: `connections` connections,
    GRPC_STREAMS calls in flight on each, the request `body`; the same figures
    as WRK_LUA's line, latency percentiles from the per-request log. `bytes`
    is the DATA received: gRPC messages, none in tollgate's own errors."""
    argv = (["taskset", "-c", "0"] if pin else []) + [
        "h2load", "-t1", f"-c{connections}", f"-m{GRPC_STREAMS}", f"-D{duration}",
        "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log_path}", url]
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load against {url} did not finish within {duration + 60} s")
    figures = {}
    for line in result.stdout.splitlines():
        words = line.replace(",", "").split()
        if line.startswith("finished in"):
            text = words[2]
            figures["duration_us"] = (float(text[:-2]) * 1e3 if text.endswith("ms")
                                      else float(text.rstrip("s")) * 1e6)
        elif line.startswith("requests:"):
            done, succeeded, errored, timeout = (int(words[i]) for i in (5, 7, 11, 13))
            figures.update(requests=succeeded, read=errored + done - succeeded, timeout=timeout)
        elif line.startswith("status codes:"):
            figures["status"] = sum(int(words[i]) for i in (4, 6, 8))
        elif line.startswith("traffic:"):
            figures["bytes"] = int(words[words.index("data") - 1].strip("()"))
    if len(figures) < 6:
        raise BenchError(f"h2load printed no result for {url}:\n{result.stdout}")
    with open(log_path) as log:
        durations = sorted(int(line.split("\t")[2]) for line in log if line.strip())
    if not durations:
        raise BenchError(f"h2load logged no call to {url}")
    figures.update(connect=0, write=0, p50=percentile(durations, 50), p99=percentile(durations, 99),
                   p999=percentile(durations, 99.9), max=durations[-1])
    return figures


def measure_grpc(proxy, scenario, duration, lua, pin):
    """One run of (m): a second of calls to warm up, then the measured calls;
    every call must have had its message back (a gRPC error has none)."""
    body = grpc_request_body(os.path.dirname(lua))
    log = os.path.join(os.path.dirname(lua), "h2load.log")
    url = proxy.url(scenario)
    run_h2load(url, scenario.connections, WARMUP_SECONDS, body, log, pin)
    pids = proxy.server.tree()
    ticks_before = cpu_ticks(pids)
    load = run_h2load(url, scenario.connections, duration, body, log, pin)
    proxy.server.check_alive()
    ticks = cpu_ticks(pids) - ticks_before
    if load["requests"] == 0:
        raise BenchError(f"{proxy.name} completed no call in scenario ({scenario.key})\n"
                         f"{proxy.server.log_tail()}")
    framed = len(GRPC_MESSAGE) + 5
    if load["bytes"] < framed * load["requests"]:
        raise BenchError(f"{proxy.name}: {load['requests']:,} calls answered but only "
                         f"{load['bytes'] // framed:,} messages came back: gRPC errors")
    return load_figures(load, ticks)


def run_ab(url, connections, duration):
    """ab's p99 (µs) for `url` under `connections` keep-alive connections for `duration` s."""
    argv = ["ab", "-q", "-k", "-c", str(connections), "-t", str(duration), "-n", "100000000", url]
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"ab against {url} did not finish within {duration + 60} s")
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "99%":
            return int(fields[1]) * 1000
    raise BenchError(f"ab printed no percentiles for {url}:\n{result.stdout}")


def percentile(sorted_values, q):
    """The nearest-rank `q`th percentile of `sorted_values` (0 when empty)."""
    if not sorted_values:
        return 0
    return sorted_values[max(0, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))) - 1)]


def run_paced(port, path, connections, duration, mean_pause_ms, timeout=10):
    """Load 127.0.0.1:port with `connections` keep-alive connections for `duration` s.

    Each connection sends GET `path` after a pause drawn from an exponential
    distribution of mean `mean_pause_ms`, its first request too: together a
    Poisson stream of connections/mean requests per second from the first
    second on, with none of the burst wrk sends when all its connections open
    (and none of the timeouts wrk counts on connections pausing longer than its
    --timeout). A connection the proxy closes is opened again. Returns the
    figures in run_wrk's shape.
    """
    rng = random.Random()
    mean = mean_pause_ms / 1000
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    latencies, received = [], 0
    sel = selectors.DefaultSelector()
    conns = [None] * connections  # index -> [socket, buffer, sent at (None while pausing)]

    def connect(i):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            errors["connect"] += 1
            conns[i] = None
            return
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        conns[i] = [s, bytearray(), None]
        sel.register(s, selectors.EVENT_READ, i)

    def drop(i):
        sel.unregister(conns[i][0])
        conns[i][0].close()
        conns[i] = None

    for i in range(connections):
        connect(i)
    start = time.monotonic()  # once every connection is open
    stop = start + duration
    schedule = [(start + rng.expovariate(1 / mean), i) for i in range(connections)]
    heapq.heapify(schedule)
    in_flight = 0
    try:
        while True:
            now = time.monotonic()
            while schedule and schedule[0][0] <= now < stop:
                _, i = heapq.heappop(schedule)
                if conns[i] is None:
                    connect(i)
                    if conns[i] is None:
                        heapq.heappush(schedule, (now + rng.expovariate(1 / mean), i))
                        continue
                try:
                    conns[i][0].send(request)
                except OSError:
                    errors["write"] += 1
                    drop(i)
                    heapq.heappush(schedule, (now + rng.expovariate(1 / mean), i))
                    continue
                conns[i][2] = now
                in_flight += 1
            if now >= stop and in_flight == 0:
                break
            if now >= stop + timeout:
                errors["timeout"] += in_flight
                break
            wake = stop + timeout if now >= stop else min(stop, schedule[0][0] if schedule else stop)
            for key, _ in sel.select(max(0.0, wake - now)):
                i = key.data
                conn = conns[i]
                try:
                    chunk = conn[0].recv(65536)
                except OSError:
                    chunk = b""
                done = time.monotonic()
                if not chunk:
                    # Closed by the proxy: mid-request an error, while pausing a
                    # keep-alive timeout; either way the next request reconnects.
                    if conn[2] is not None:
                        errors["read"] += 1
                        in_flight -= 1
                        if done < stop:
                            heapq.heappush(schedule, (done + rng.expovariate(1 / mean), i))
                    drop(i)
                    continue
                conn[1] += chunk
                if conn[2] is None or not response_complete(conn[1]):
                    continue
                latencies.append(round((done - conn[2]) * 1e6))
                status = int(bytes(conn[1][9:12]))
                if status > 399:
                    errors["status"] += 1
                received += len(conn[1])
                conn[1].clear()
                conn[2] = None
                in_flight -= 1
                if done < stop:
                    heapq.heappush(schedule, (done + rng.expovariate(1 / mean), i))
    finally:
        for i in range(connections):
            if conns[i] is not None:
                drop(i)
        sel.close()
    latencies.sort()
    return {"requests": len(latencies), "duration_us": round((time.monotonic() - start) * 1e6),
            "bytes": received, **errors, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "p999": percentile(latencies, 99.9),
            "max": latencies[-1] if latencies else 0}


def backend_counters(status_port):
    """nginx stub_status on `status_port`: (accepts, requests), each counting this read itself."""
    status, body = http_get(status_port, "/status")
    lines = body.decode().splitlines()
    if status != 200 or len(lines) < 3:
        raise BenchError(f"the backends' stub_status on :{status_port} answered {status}: {body[:200]!r}")
    accepts, _handled, requests = (int(field) for field in lines[2].split())
    return accepts, requests


def measure(proxy, scenario, duration, lua, pin):
    """One measured run: warm up, then load `proxy` and return its figures for this run."""
    url = proxy.url(scenario)
    if scenario.reuse:
        return measure_reuse(proxy, scenario, duration, lua, pin)
    if scenario.grpc:
        return measure_grpc(proxy, scenario, duration, lua, pin)
    extra = ""
    if scenario.pause_ms:
        extra += f"delay = function() return {scenario.pause_ms} end\n"
    if scenario.count_backends:
        extra += WRK_COUNT_LUA
    if extra:
        lua = write_file(lua[:-len(".lua")] + f"-{scenario.key}.lua", WRK_LUA + extra)
    run_wrk(url, scenario.connections, WARMUP_SECONDS, lua, scenario.close, pin)
    pids = proxy.server.tree()
    ticks_before = cpu_ticks(pids)
    wrk = run_wrk(url, scenario.connections, duration, lua, scenario.close, pin)
    proxy.server.check_alive()
    ticks = cpu_ticks(pids) - ticks_before
    requests = wrk["requests"]
    if requests == 0:
        raise BenchError(f"{proxy.name} completed no request in scenario ({scenario.key})\n"
                         f"{proxy.server.log_tail()}")
    share = {}
    if scenario.count_backends:
        counts = wrk.get("backends") or {}
        counted = sum(counts.values())
        if counted == 0:
            raise BenchError(f"wrk counted no X-Backend answer from {proxy.name} in ({scenario.key})")
        share = {"backends": counts, "slow_share_pct": 100 * counts.get(SLOW_BACKEND, 0) / counted,
                 "p99_ab_us": run_ab(url, scenario.connections, duration)}
    return {**load_figures(wrk, ticks), **share}


def load_figures(load, ticks):
    """The figures of one run from what its load generator reported (wrk's
    done() hook, or run_paced, which report the same keys) and the proxy's CPU
    ticks over it."""
    requests = load["requests"]
    seconds = load["duration_us"] / 1e6
    return {
        "rps": requests / seconds,
        "mib_per_s": load["bytes"] / (1 << 20) / seconds,
        "p50_us": load["p50"],
        "p99_us": load["p99"],
        "p999_us": load["p999"],
        "max_us": load["max"],
        "cpu_us_per_request": ticks / CLK_TCK * 1e6 / requests,
        "requests": requests,
        "non_2xx": load["status"],
        "socket_errors": {k: load[k] for k in ("connect", "read", "write", "timeout")},
    }


def measure_reuse(proxy, scenario, duration, lua, pin):
    """One run of (l): a second of wrk at full speed over REUSE_BACKENDS connections
    opens connections to every backend, then the paced load; the backends'
    stub_status counters read around it give the connections the proxy opened to them.

    The warm-up keeps to 20 connections so that neither proxy's pool overflows
    (pingora keeps 128 idle connections in all, nginx 64 per worker): after a
    burst of 200, pingora's pool was left with no connection to any backend in
    about half the runs (each first paced request per backend then connects),
    a transient this scenario does not measure.
    """
    run_wrk(proxy.url(scenario), REUSE_BACKENDS, WARMUP_SECONDS, lua, False, pin)
    time.sleep(0.5)  # the warm-up's last requests reach the backends before the first count
    pids = proxy.server.tree()
    accepts_before, requests_before = backend_counters(proxy.status_port)
    ticks_before = cpu_ticks(pids)
    load = run_paced(proxy.port, scenario.path, scenario.connections, duration, scenario.pause_ms)
    proxy.server.check_alive()
    ticks = cpu_ticks(pids) - ticks_before
    accepts_after, requests_after = backend_counters(proxy.status_port)
    # Each stub_status read is one connection and one request of its own.
    opened = accepts_after - accepts_before - 1
    backend_requests = requests_after - requests_before - 1
    requests = load["requests"]
    if requests == 0:
        raise BenchError(f"{proxy.name} completed no request in scenario ({scenario.key})\n"
                         f"{proxy.server.log_tail()}")
    return {
        **load_figures(load, ticks),
        "new_upstream_connections": opened,
        "backend_requests": backend_requests,
        "new_conns_per_1k": 1000 * opened / requests,
    }


def median_figures(runs, figures=FIGURES):
    """Per figure, the median over `runs`; errors are summed instead."""
    medians = {key: statistics.median(run[key] for run in runs) for key, _ in figures}
    medians["non_2xx"] = sum(run["non_2xx"] for run in runs)
    medians["socket_errors"] = sum(sum(run["socket_errors"].values()) for run in runs)
    return medians


# ---------------------------------------------------------------------------
# Memory with idle connections


def response_complete(buf):
    """True once `buf` holds a whole HTTP response head and its Content-Length body."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = 0
    for line in bytes(buf[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return len(buf) >= head_end + 4 + length


def open_idle_connections(port, count, tls_context=None, batch=500, timeout=60):
    """Open `count` keep-alive connections to 127.0.0.1:port, each after one answered GET /small.

    Over TLS (HTTP/1.1) when `tls_context` is given. Non-blocking sockets and a
    selector, `batch` connections at a time; returns the open sockets. Raises
    BenchError when a connection fails or is not answered 200.
    """
    request = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sel = selectors.DefaultSelector()
    opened = []
    try:
        for first in range(0, count, batch):
            # socket -> [phase, answer so far]; phase is "connect", "handshake" or "answer".
            pending = {}
            for _ in range(min(batch, count - first)):
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    raise BenchError(f"connection {len(opened)} to :{port} failed: {os.strerror(err)}")
                pending[s] = ["connect", bytearray()]
                opened.append(s)
                sel.register(s, selectors.EVENT_WRITE)
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise BenchError(f"{len(pending)} idle connections to :{port} "
                                     f"unanswered after {timeout} s")
                for key, _ in sel.select(timeout=1):
                    s = key.fileobj
                    step_idle_connection(sel, s, pending, opened, tls_context, request, port)
        return opened
    except BaseException:
        for s in opened:
            s.close()
        raise
    finally:
        sel.close()


def step_idle_connection(sel, s, pending, opened, tls_context, request, port):
    """One step of open_idle_connections for socket `s`, ready for its selector event."""
    phase, buf = pending[s]
    if phase == "connect":
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise BenchError(f"connection to :{port} failed: {os.strerror(err)}")
        if tls_context is None:
            s.send(request)
            pending[s][0] = "answer"
            sel.modify(s, selectors.EVENT_READ)
            return
        sel.unregister(s)
        wrapped = tls_context.wrap_socket(s, server_hostname="localhost", do_handshake_on_connect=False)
        del pending[s]
        opened[opened.index(s)] = wrapped
        s = wrapped
        pending[s] = ["handshake", buf]
        sel.register(s, selectors.EVENT_WRITE)
        phase = "handshake"
    if phase == "handshake":
        try:
            s.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(s, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            sel.modify(s, selectors.EVENT_WRITE)
            return
        s.send(request)
        pending[s][0] = "answer"
        sel.modify(s, selectors.EVENT_READ)
        return
    try:
        chunk = s.recv(65536)
    except ssl.SSLWantReadError:
        return
    if not chunk:
        raise BenchError(f"an idle connection to :{port} was closed before its answer")
    buf += chunk
    if response_complete(buf):
        if not buf.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"idle connection to :{port} answered {bytes(buf[:40])!r}")
        sel.unregister(s)
        del pending[s]


def count_closed(socks):
    """How many of `socks` the peer has closed (readable with no request pending)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed = len(sel.select(timeout=0))
    sel.close()
    return closed


def measure_rss(proxy):
    """RSS of a freshly restarted proxy (KiB, process and children summed).

    Read idle, while holding 10,000 idle keep-alive client connections, and 1 s
    after they closed; then, restarted again, the same with 10,000 idle
    HTTP/1.1 connections over TLS (`tls_` keys). The restarts keep the memory
    the allocators retained from the load runs (and from the plain
    connections) out of the figures.
    """
    figures = {"connections": IDLE_CONNECTIONS}
    tls_context = ssl.create_default_context()
    tls_context.check_hostname = False
    tls_context.verify_mode = ssl.CERT_NONE
    tls_context.set_alpn_protocols(["http/1.1"])
    for prefix, port, context in (("", proxy.port, None), ("tls_", proxy.tls_port, tls_context)):
        proxy.server.restart([proxy.port, proxy.tls_port])
        time.sleep(1)
        idle = rss_kib(proxy.server.tree())
        figures["pids"] = len(proxy.server.pids)
        socks = open_idle_connections(port, IDLE_CONNECTIONS, context)
        try:
            time.sleep(1)
            held = rss_kib(proxy.server.tree())
            dropped = count_closed(socks)
        finally:
            for s in socks:
                s.close()
        time.sleep(1)
        after = rss_kib(proxy.server.tree())
        figures.update({
            f"{prefix}idle_kib": idle,
            f"{prefix}with_connections_kib": held,
            f"{prefix}after_close_kib": after,
            f"{prefix}bytes_per_connection": (held - idle) * 1024 / IDLE_CONNECTIONS,
            f"{prefix}dropped_connections": dropped,
        })
    return figures


# ---------------------------------------------------------------------------
# Output


def fmt(key, value):
    """A figure formatted for the table."""
    if key == "cpu_us_per_request":
        return f"{value:.1f}"
    if key.endswith("_pct"):
        return f"{value:.2f}"
    if key.endswith("_per_1k"):
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def ratio(a, b):
    """a/b with two decimals, or `-` when b is zero."""
    return f"{a / b:.2f}" if b else "-"


def print_row(label, cells, width=26, cell_width=14):
    """One table row: the label, then right-aligned cells."""
    print(f"  {label:<{width - 2}}" + "".join(f"{cell:>{cell_width}}" for cell in cells))


def scenarios_run(results):
    """The scenarios that `results` holds (all of them, unless --only)."""
    return [scenario for scenario in SCENARIOS if scenario.key in results]


def ratio_pairs(scenario):
    """The (proxy, other) pairs of `scenario`'s ratio columns: its own, or the first proxy's to the others."""
    return scenario.ratios or tuple((scenario.proxies[0], n) for n in scenario.proxies[1:])


def table_header(scenario):
    """Column headers: each proxy, then one per ratio column."""
    names = scenario.proxies
    if names == PROXIES:
        return [LABELS[n] for n in names] + ["tg/nginx", "tg/HAProxy"]
    if scenario.ratios:
        return [LABELS[n] for n in names] + [RATIO_LABELS[pair] for pair in scenario.ratios]
    short = [LABELS[n].replace("tollgate", "tg") for n in names]
    return short + [RATIO_LABELS.get((names[0], n), f"{short[0].split()[-1]}/{label.split()[-1]}")
                    for n, label in zip(names[1:], short[1:])]


def check_targets(scenario, med):
    """`scenario`'s targets checked on the medians `med`, as JSON-ready dicts."""
    checks = []
    for target in scenario.targets:
        value, other = med[target.proxy][target.figure], med[target.other][target.figure]
        checks.append({
            "target": target.text,
            "figure": target.figure,
            "proxy": target.proxy,
            "other": target.other,
            "factor": target.factor,
            "value": value,
            "other_value": other,
            "limit": target.factor * other,
            "ratio": value / other if other else None,
            # Nothing to compare with when the other proxy measured 0 (a
            # scenario that did not run, or failed): neither met nor missed.
            "met": value <= target.factor * other if other else None,
        })
    return checks


def verdict(met):
    """The words for a target's outcome: met, NOT met, or not measured (None)."""
    return "not measured" if met is None else ("met" if met else "NOT met")


def print_targets(checks):
    """One line per target: met or not met, with the figures."""
    for check in checks:
        key, unit = check["figure"], FIGURE_LABELS.get(check["figure"], check["figure"])
        ratio_text = f"{check['ratio']:.2f}x" if check["ratio"] is not None else "-"
        print(f"  target: {check['target']}: {verdict(check['met'])} "
              f"({unit}: {LABELS[check['proxy']]} {fmt(key, check['value'])}, "
              f"{LABELS[check['other']]} {fmt(key, check['other_value'])}, "
              f"ratio {ratio_text}, limit {check['factor']:g}x = {fmt(key, check['limit'])})")


def print_table(results, rss):
    """Print the medians per scenario and figure, with tollgate's ratios to the others."""
    for scenario in scenarios_run(results):
        med = results[scenario.key]["median"]
        names = scenario.proxies
        header = table_header(scenario)
        cell_width = max([14] + [len(cell) + 1 for cell in header])
        print(f"\n({scenario.key}) {scenario.title}")
        print_row("", header, cell_width=cell_width)
        for key, label in scenario_figures(scenario):
            values = [med[n][key] for n in names]
            ratios = [ratio(med[a][key], med[b][key]) for a, b in ratio_pairs(scenario)]
            print_row(label, [fmt(key, v) for v in values] + ratios, cell_width=cell_width)
        print_row("non-2xx (all rounds)", [f"{med[n]['non_2xx']:,}" for n in names], cell_width=cell_width)
        print_row("socket errors (all rounds)", [f"{med[n]['socket_errors']:,}" for n in names],
                  cell_width=cell_width)
        print_targets(results[scenario.key].get("targets", []))

    print(f"\nMemory: RSS in KiB (process + children) of each proxy restarted fresh: idle, holding "
          f"{IDLE_CONNECTIONS:,} idle keep-alive connections, and after closing them; plain HTTP, "
          f"then HTTP/1.1 over TLS")
    print_row("", [LABELS[n] for n in PROXIES] + ["tg/nginx", "tg/HAProxy"])
    for prefix, kind in (("", "plain"), ("tls_", "TLS")):
        rows = (
            ("idle_kib", f"{kind}: RSS idle KiB"),
            ("with_connections_kib", f"{kind}: RSS {IDLE_CONNECTIONS:,} conns"),
            ("after_close_kib", f"{kind}: RSS after closing"),
            ("bytes_per_connection", f"{kind}: bytes per conn"),
        )
        for key, label in rows:
            values = [rss[n][prefix + key] for n in PROXIES]
            print_row(label, [fmt(key, v) for v in values] + [ratio(values[0], v) for v in values[1:]])
        print_row(f"{kind}: conns dropped", [f"{rss[n][prefix + 'dropped_connections']:,}" for n in PROXIES])
    for check in memory_targets(rss):
        print(f"  target: {check['text']}: {verdict(check['met'])} "
              f"(tollgate {check['value']:,.0f} bytes, limit {check['limit']:,})")


def memory_targets(rss):
    """Issue 19's target 3 on tollgate's figures: at most 8 KB per idle plain
    connection and 16 KB per idle TLS connection."""
    checks = []
    for key, limit, text in (("bytes_per_connection", 8192, "tollgate at most 8 KB per idle plain connection"),
                             ("tls_bytes_per_connection", 16384,
                              "tollgate at most 16 KB per idle TLS connection")):
        value = rss["tollgate"][key]
        checks.append({"text": text, "value": value, "limit": limit, "met": value <= limit})
    return checks


def bar_panel(x0, y0, width, height, title, key, results, log=False, skip=()):
    """SVG elements of one grouped bar chart: `key`'s median per scenario and proxy.

    With `log`, the value axis is logarithmic (powers of ten), for figures that
    differ by orders of magnitude between scenarios. Scenarios whose keys are in
    `skip` are left out.
    """
    groups = [(s, [(n, results[s.key]["median"][n][key]) for n in s.proxies])
              for s in scenarios_run(results) if s.key not in skip]
    if not groups:
        return []
    values = [v for _, bars in groups for _, v in bars]
    if log:
        low = math.floor(math.log10(max(min(values), 1)))
        high = max(math.ceil(math.log10(max(values))), low + 1)
        ticks = [10 ** e for e in range(low, high + 1)]
        scale = lambda v: (math.log10(max(v, 10 ** low)) - low) / (high - low)  # noqa: E731
    else:
        top = max(values) or 1
        magnitude = 10 ** math.floor(math.log10(top))
        top = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= top)
        ticks = [top * i / 4 for i in range(5)]
        scale = lambda v: v / top  # noqa: E731
    plot_x, plot_y, plot_w, plot_h = x0 + 60, y0 + 30, width - 70, height - 60
    out = [f'<text x="{x0 + width / 2}" y="{y0 + 16}" text-anchor="middle" font-size="14" '
           f'font-weight="bold">{html.escape(title)}</text>']
    for tick in ticks:
        y = plot_y + plot_h - plot_h * scale(tick)
        out.append(f'<line x1="{plot_x}" y1="{y:.1f}" x2="{plot_x + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{plot_x - 6}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{tick:,g}</text>')
    group_w = plot_w / len(groups)
    bar_w = group_w * 0.8 / max(len(PROXIES), max(len(bars) for _, bars in groups))
    for g, (scenario, bars) in enumerate(groups):
        left = plot_x + g * group_w + (group_w - bar_w * len(bars)) / 2
        for b, (name, value) in enumerate(bars):
            h = plot_h * scale(value)
            x = left + b * bar_w
            y = plot_y + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS[name]}"><title>{LABELS[name]}: {value:,.1f}</title></rect>')
            label = f"{value:.1f}" if value < 100 else f"{value:,.0f}"
            out.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{label}</text>')
        out.append(f'<text x="{plot_x + g * group_w + group_w / 2:.1f}" y="{plot_y + plot_h + 16}" '
                   f'text-anchor="middle" font-size="12">({scenario.key})</text>')
    return out


def write_svg(path, results, info):
    """A hand-written SVG: CPU µs/request and p99 latency per scenario, grouped by proxy."""
    width, panel_h = 900, 320
    # One legend entry per proxy the run measured, in order of first appearance,
    # wrapped onto as many rows as the width needs.
    names = []
    for scenario in scenarios_run(results):
        names += [name for name in scenario.proxies if name not in names]
    legend, x, y = [], 20, 2 * panel_h + 10
    for name in names:
        entry_w = 18 + 7 * len(LABELS[name]) + 16
        if x + entry_w > width - 10 and x > 20:
            x, y = 20, y + 18
        legend.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{COLORS[name]}"/>')
        legend.append(f'<text x="{x + 18}" y="{y + 11}" font-size="12">{html.escape(LABELS[name])}</text>')
        x += entry_w
    notes_y = y + 34
    threads = "tollgate and the pingora floor" if FLOOR in names else "tollgate"
    two = ""
    idle = tuple(s.key for s in scenarios_run(results) if s.reuse)
    if idle:
        two = (" except in (l): two each; (l) is not in the CPU panel (at 8 requests/s its CPU per "
               "request is mostly the proxies' idle work)")
    lines = [f"({s.key}) {s.title}" for s in scenarios_run(results)] + [
        f"Medians; {info['cpu_model']}, {info['nproc']} cores, Linux {info['kernel']}; "
        f"nginx and HAProxy with one worker, {threads} with one thread{two}."]
    notes = [f'<text x="10" y="{notes_y + 15 * i}" font-size="11">{html.escape(line)}</text>'
             for i, line in enumerate(lines)]
    body = (bar_panel(0, 0, width, panel_h, "Proxy CPU time per request (µs, lower is better)",
                      "cpu_us_per_request", results, skip=idle)
            + bar_panel(0, panel_h, width, panel_h, "p99 latency (µs, log scale, lower is better)", "p99_us",
                        results, log=True)
            + legend + notes)
    height = notes_y + 15 * len(lines)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
           + "\n".join(body) + "\n</svg>\n")
    write_file(path, svg)


# ---------------------------------------------------------------------------
# Main


def parse_args():
    """Command-line options; --quick means 1 round of 3 s unless --rounds/--duration say otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tollgate", required=True, help="the tollgate binary (target/release/tollgate)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per scenario (default 3)")
    parser.add_argument("--duration", type=int, help="seconds of load per run (default 10; (l) runs at least 30 unless --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of 3 s per scenario")
    parser.add_argument("--pin", action="store_true",
                        help="run the proxy on CPU 1 and wrk on CPU 0 (taskset)")
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default=set(),
                        help="run only these scenarios (comma-separated keys, e.g. i,j)")
    parser.add_argument("--demo-backend",
                        help="the demo backend of scenario (k) (default: examples/tollgate-demo-backend "
                             "next to the tollgate binary)")
    parser.add_argument("--floor",
                        help="the bare pingora proxy of scenarios (a) and (e) (default: "
                             "examples/pingora-floor next to the tollgate binary)")
    args = parser.parse_args()
    unknown = args.only - {scenario.key for scenario in SCENARIOS}
    if unknown:
        parser.error(f"no scenario {', '.join(sorted(unknown))}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    if not (os.path.isfile(args.tollgate) and os.access(args.tollgate, os.X_OK)):
        parser.error(f"{args.tollgate} is not an executable (build it: cargo build --release --bins)")
    args.tollgate = os.path.abspath(args.tollgate)
    if args.demo_backend is None:
        args.demo_backend = os.path.join(os.path.dirname(args.tollgate), "examples", "tollgate-demo-backend")
    args.demo_backend = os.path.abspath(args.demo_backend)
    if args.floor is None:
        args.floor = os.path.join(os.path.dirname(args.tollgate), "examples", "pingora-floor")
    args.floor = os.path.abspath(args.floor)
    wants_floor = any(FLOOR in s.proxies for s in selected_scenarios(args))
    if wants_floor and not (os.path.isfile(args.floor) and os.access(args.floor, os.X_OK)):
        parser.error(f"{args.floor} is not an executable "
                     f"(build it: cargo build --release --examples, or pass --floor)")
    wants_demo = any(set(s.proxies) & set(LEAST_PROXIES) for s in selected_scenarios(args))
    if wants_demo and not (os.path.isfile(args.demo_backend) and os.access(args.demo_backend, os.X_OK)):
        parser.error(f"{args.demo_backend} is not an executable "
                     f"(build it: cargo build --release --examples, or pass --demo-backend)")
    return args


def selected_scenarios(args):
    """The scenarios to run: all of them, or those --only names."""
    return [scenario for scenario in SCENARIOS if not args.only or scenario.key in args.only]


def start_everything(tmp, tollgate, pin, nofile, servers, scenarios, demo_backend, floor_bin):
    """Write every configuration, start the backends and the proxies, check their answers.

    `nofile` is the descriptor limit the servers inherit. Started servers are
    appended to `servers` as they start (so they are stopped even when a later
    one fails). The demo backends and the proxies over them (LEAST_PROXIES),
    and the pingora floor (`floor_bin`), start only when one of `scenarios`
    loads them. Returns (proxies by name, configuration texts).
    """
    os.makedirs(os.path.join(tmp, "www"))
    large_body = os.urandom(LARGE_SIZE)
    mib_body = os.urandom(MIB_SIZE)
    for file_name, body in (("large", large_body), ("mib", mib_body)):
        with open(os.path.join(tmp, "www", file_name), "wb") as f:
            f.write(body)
    bodies = {"/small": SMALL_BODY, "/large": large_body}
    cached_bodies = dict(bodies, **{"/mib": mib_body})
    crt, key, pem = make_certificate(tmp)
    (b1, b2, tg, tg_tls, ngx, ngx_tls, hap, hap_tls, full, full_tls, full_metrics, tgc, ngxc,
     tcl, tll, redis_port, floor, floor_tls, grpc_backend, grpc_tg, grpc_ngx,
     *least_ports) = free_ports(21 + len(DEMO_BACKENDS) + len(LEAST_PROXIES) + REUSE_BACKENDS + 3)
    backends = (b1, b2)
    demo_ports = least_ports[:len(DEMO_BACKENDS)]
    ltime, lconn, ngxl = least_ports[len(DEMO_BACKENDS):len(DEMO_BACKENDS) + len(LEAST_PROXIES)]
    reuse_status, tg2, ngx2, *reuse_ports = least_ports[len(DEMO_BACKENDS) + len(LEAST_PROXIES):]
    least = any(set(s.proxies) & set(LEAST_PROXIES) for s in scenarios)
    reuse = any(s.reuse for s in scenarios)
    with_floor = any(FLOOR in s.proxies for s in scenarios)
    configs = {
        "backend.conf": backend_conf(tmp, backends, nofile),
        "nginx.conf": nginx_proxy_conf(tmp, ngx, ngx_tls, backends, crt, key, nofile),
        "haproxy.cfg": haproxy_conf(hap, hap_tls, backends, pem),
        "tollgate.yaml": tollgate_conf(tmp, "tollgate", tg, backends, tls=(tg_tls, crt, key)),
        "tollgate-full.yaml": tollgate_conf(tmp, "tollgate-full", full, backends, tls=(full_tls, crt, key),
                                            metrics_port=full_metrics),
        "tollgate-cache.yaml": tollgate_conf(tmp, "tollgate-cache", tgc, backends, cache=True),
        "nginx-cache.conf": nginx_cache_conf(tmp, ngxc, backends, nofile),
        "tollgate-cluster.yaml": tollgate_conf(tmp, "tollgate-cluster", tcl, backends,
                                               limit_scope="cluster", redis_port=redis_port),
        "tollgate-limit.yaml": tollgate_conf(tmp, "tollgate-limit", tll, backends, limit_scope="local"),
    }
    if least:
        configs.update({
            "tollgate-least-time.yaml": tollgate_conf(tmp, "tollgate-least-time", ltime, demo_ports,
                                                      algorithm="least_time"),
            "tollgate-least-conn.yaml": tollgate_conf(tmp, "tollgate-least-conn", lconn, demo_ports,
                                                      algorithm="least_connections"),
            "nginx-least-conn.conf": nginx_least_conn_conf(tmp, ngxl, demo_ports, nofile),
        })
    if reuse:
        configs.update({
            "backend-reuse.conf": reuse_backend_conf(tmp, reuse_ports, reuse_status, nofile),
            "tollgate-2t.yaml": tollgate_conf(tmp, "tollgate-2t", tg2, reuse_ports, threads=2),
            "nginx-2w.conf": nginx_reuse_conf(tmp, ngx2, reuse_ports, nofile),
        })
    # The floor has flags, no file: its command line stands in the report's configurations.
    floor_argv = [floor_bin, "--listen", f"127.0.0.1:{floor}", "--upstream", f"127.0.0.1:{b1}",
                  "--tls-listen", f"127.0.0.1:{floor_tls}", "--tls-cert", crt, "--tls-key", key,
                  "--threads", "1"]
    paths = {name: write_file(os.path.join(tmp, name), text) for name, text in configs.items()}
    if with_floor:
        configs["pingora-floor"] = " ".join(floor_argv)
    for name in paths:
        if name.startswith("tollgate"):
            check_tollgate_conf(tollgate, paths[name])

    pin_proxy = ["taskset", "-c", "1"] if pin else []
    tollgate_env = dict(os.environ, RUST_LOG="warn")

    def server(name, argv, stop_signal=signal.SIGTERM, env=None):
        """A Server logging to TMP/NAME.log, registered in `servers` for stopping."""
        started = Server(LABELS.get(name, name), argv, os.path.join(tmp, f"{name}.log"), stop_signal, env)
        servers.append(started)
        return started

    def nginx_argv(conf):
        """nginx in the foreground on `conf`, with TMP as its prefix and startup errors on stderr."""
        return ["nginx", "-e", "stderr", "-c", conf, "-p", tmp, "-g", "daemon off;"]

    backend = server("backend", nginx_argv(paths["backend.conf"]))
    backend.start(backends)
    redis = server("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"])
    redis.start([redis_port])
    for port in backends:
        verify_answers(f"backend :{port}", port, cached_bodies)
    if least:
        for (name, delay), port in zip(DEMO_BACKENDS, demo_ports):
            demo = server(f"demo-{name}", [demo_backend, "--listen", f"127.0.0.1:{port}",
                                           "--name", name, "--delay", str(delay)])
            demo.start([port])
            verify_backend_names(f"demo backend {name}", port, [name], tries=1)
    if reuse:
        reuse_backend = server("backend-reuse", nginx_argv(paths["backend-reuse.conf"]))
        reuse_backend.start(reuse_ports + [reuse_status])
        for port in reuse_ports:
            verify_answers(f"backend :{port}", port, {"/small": SMALL_BODY})
        backend_counters(reuse_status)

    specs = (
        Proxy("tollgate", server("tollgate", pin_proxy + [tollgate, "-c", paths["tollgate.yaml"]],
                                 signal.SIGINT, tollgate_env), tg, tg_tls),
        Proxy("nginx", server("nginx", pin_proxy + nginx_argv(paths["nginx.conf"])), ngx, ngx_tls),
        Proxy("haproxy", server("haproxy", pin_proxy + ["haproxy", "-f", paths["haproxy.cfg"], "-db"]),
              hap, hap_tls),
        Proxy("tollgate-full", server("tollgate-full",
                                      pin_proxy + [tollgate, "-c", paths["tollgate-full.yaml"]],
                                      signal.SIGINT, tollgate_env), full, full_tls),
        Proxy("tollgate-cache", server("tollgate-cache",
                                       pin_proxy + [tollgate, "-c", paths["tollgate-cache.yaml"]],
                                       signal.SIGINT, tollgate_env), tgc),
        Proxy("nginx-cache", server("nginx-cache", pin_proxy + nginx_argv(paths["nginx-cache.conf"])), ngxc),
        Proxy("tollgate-cluster", server("tollgate-cluster",
                                         pin_proxy + [tollgate, "-c", paths["tollgate-cluster.yaml"]],
                                         signal.SIGINT, tollgate_env), tcl),
        Proxy("tollgate-limit", server("tollgate-limit",
                                       pin_proxy + [tollgate, "-c", paths["tollgate-limit.yaml"]],
                                       signal.SIGINT, tollgate_env), tll),
    )
    if with_floor:
        specs += (Proxy(FLOOR, server(FLOOR, pin_proxy + floor_argv, signal.SIGINT), floor, floor_tls),)
    proxies = {}
    if least:
        names = [name for name, _ in DEMO_BACKENDS]
        least_specs = [Proxy(name, server(name, pin_proxy + [tollgate, "-c", paths[f"{name}.yaml"]],
                                          signal.SIGINT, tollgate_env), port)
                       for name, port in (("tollgate-least-time", ltime), ("tollgate-least-conn", lconn))]
        least_specs.append(Proxy("nginx-least-conn", server(
            "nginx-least-conn", pin_proxy + nginx_argv(paths["nginx-least-conn.conf"])), ngxl))
        for proxy in least_specs:
            proxy.server.start([proxy.port])
            verify_backend_names(proxy.name, proxy.port, names)
            proxies[proxy.name] = proxy
    if reuse:
        # Not pinned with --pin: two threads or workers on one CPU would not be two.
        reuse_specs = (
            Proxy("tollgate-2t", server("tollgate-2t", [tollgate, "-c", paths["tollgate-2t.yaml"]],
                                        signal.SIGINT, tollgate_env), tg2, status_port=reuse_status),
            Proxy("nginx-2w", server("nginx-2w", nginx_argv(paths["nginx-2w.conf"])), ngx2,
                  status_port=reuse_status),
        )
        for proxy in reuse_specs:
            proxy.server.start([proxy.port])
            verify_answers(proxy.name, proxy.port, {"/small": SMALL_BODY})
            proxies[proxy.name] = proxy
    for proxy in specs:
        proxy.server.start([proxy.port])
        cached = proxy.name.endswith("-cache")
        verify_answers(proxy.name, proxy.port, cached_bodies if cached else bodies, proxy.tls_port, crt)
        if cached:
            # Twice: the second answer must come from the cache, the same bytes.
            verify_answers(proxy.name, proxy.port, cached_bodies)
        proxies[proxy.name] = proxy
    status, _ = http_get(full_metrics, "/metrics")
    if status != 200:
        raise BenchError(f"tollgate full: the metrics endpoint answered {status}")
    if any(s.grpc for s in scenarios):
        grpc_proxies, grpc_configs = start_grpc(tmp, tollgate, pin, nofile, server,
                                                (grpc_backend, grpc_tg, grpc_ngx))
        proxies.update(grpc_proxies)
        configs.update(grpc_configs)
    return proxies, configs


def print_progress(scenario, round_no, name, run):
    """One line per measured run, with its errors when there were any."""
    line = (f"  ({scenario.key}) round {round_no} {LABELS[name]:<19} {run['rps']:>10,.0f} req/s  "
            f"p99 {run['p99_us']:>7,} µs  {run['cpu_us_per_request']:6.1f} CPU µs/req")
    if "slow_share_pct" in run:
        line += f"  {run['slow_share_pct']:.2f}% from {SLOW_BACKEND}"
    if "new_conns_per_1k" in run:
        line += (f"  {run['new_upstream_connections']:,} new upstream conns for {run['requests']:,} "
                 f"requests ({run['new_conns_per_1k']:.1f}/1k)")
    if run["non_2xx"]:
        line += f"  non-2xx {run['non_2xx']:,}"
    if any(run["socket_errors"].values()):
        line += f"  socket errors {run['socket_errors']}"
    print(line, flush=True)


def run_benchmark(args, tmp, servers):
    """Start the servers, run every scenario in interleaved rounds, measure RSS; return the results."""
    tollgate = args.tollgate
    info = machine_info(tollgate)
    info["nofile_limit"] = raise_nofile()
    proxies, configs = start_everything(tmp, tollgate, args.pin, info["nofile_limit"], servers,
                                        selected_scenarios(args), args.demo_backend, args.floor)
    lua = write_file(os.path.join(tmp, "report.lua"), WRK_LUA)
    print(f"{info['cpu_model']}, {info['nproc']} cores, Linux {info['kernel']}; "
          f"{args.rounds} round(s) of {args.duration} s per proxy and scenario"
          f"{', proxy on CPU 1 and wrk on CPU 0' if args.pin else ''}", flush=True)

    results = {}
    for scenario in selected_scenarios(args):
        runs = {name: [] for name in scenario.proxies}
        duration = args.duration if args.quick else max(args.duration, scenario.min_duration)
        for round_no in range(1, args.rounds + 1):
            for name in scenario.proxies:
                run = measure(proxies[name], scenario, duration, lua, args.pin)
                runs[name].append(run)
                print_progress(scenario, round_no, name, run)
        results[scenario.key] = {
            "title": scenario.title,
            "url_path": scenario.path,
            "connections": scenario.connections,
            "connection_close": scenario.close,
            "tls": scenario.tls,
            "pause_ms": scenario.pause_ms,
            "duration_s": duration,
            "rounds": runs,
            "median": {name: median_figures(r, scenario_figures(scenario)) for name, r in runs.items()},
        }
        if scenario.proxies == LEAST_PROXIES:
            results[scenario.key]["demo_backends"] = [{"name": name, "delay_ms": delay}
                                                      for name, delay in DEMO_BACKENDS]
        if scenario.reuse:
            results[scenario.key]["reuse"] = {
                "client": "bench/run.py run_paced: exponential pauses of mean pause_ms, first request too",
                "backends": REUSE_BACKENDS, "backend_keepalive_timeout_s": REUSE_IDLE_S,
                "tollgate_threads": 2, "nginx_workers": 2, "nginx_upstream_keepalive": 64,
                "counted": "backend nginx stub_status accepts/requests, read before and after each run",
            }
        if scenario.targets:
            results[scenario.key]["targets"] = check_targets(scenario, results[scenario.key]["median"])

    rss = {}
    for name in PROXIES:
        rss[name] = measure_rss(proxies[name])
        print(f"  RSS {LABELS[name]:<9} idle {rss[name]['idle_kib']:,} KiB, "
              f"with {IDLE_CONNECTIONS:,} connections {rss[name]['with_connections_kib']:,} KiB, "
              f"with {IDLE_CONNECTIONS:,} TLS connections {rss[name]['tls_with_connections_kib']:,} KiB",
              flush=True)
    return {
        "machine": info,
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": WARMUP_SECONDS,
                     "pin": args.pin, "quick": args.quick, "wrk": "wrk -t2 --timeout 10s --latency"},
        "scenarios": results,
        "rss": rss,
        "memory_targets": memory_targets(rss),
        "configs": configs,
    }


def main():
    """Run the benchmark, print the table, write the JSON and SVG; exit 1 on any failure."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody when started by root
    servers = []
    failed = False
    try:
        ensure_packages()
        report = run_benchmark(args, tmp, servers)
    except BenchError as e:
        failed = True
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in reversed(servers):
            server.stop()
        if failed and servers:
            print(f"bench: configurations and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print_table(report["scenarios"], report["rss"])
    os.makedirs(RESULTS_DIR, exist_ok=True)
    # A partial run (--only) does not replace the full one.
    stem = "only-" + "".join(sorted(args.only)) if args.only else "latest"
    write_file(os.path.join(RESULTS_DIR, f"{stem}.json"), json.dumps(report, indent=2) + "\n")
    write_svg(os.path.join(RESULTS_DIR, f"{stem}.svg"), report["scenarios"], report["machine"])
    print(f"\nwrote {os.path.relpath(RESULTS_DIR)}/{stem}.json and {stem}.svg")
    bad = [f"({key}) {LABELS[name]}: {med['non_2xx']} non-2xx"
           for key, scenario in report["scenarios"].items()
           for name, med in scenario["median"].items() if med["non_2xx"]]
    if bad:
        print("bench: error: proxies served errors under load: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
