#!/usr/bin/env python3
"""A/B of request IDs and tracing on keep-alive connections: tollgate's
instructions per proxied request, counted by callgrind, with
`server.request_id` and `server.tracing` on (sampling 1% and 100%) against
both off.

Usage (what `make bench` runs after bench/run.py):

    python3 bench/tracing.py --tollgate target/release/tollgate [--requests 4000] [--rounds 3]

Arms: `off`; `request IDs` alone (the part of the budget they take);
`IDs + tracing 1%` and `IDs + tracing 100%`, exporting to an OTLP/HTTP sink
of this script (it answers every export 200, as a collector does), whose
batches tollgate's exporter thread encodes and posts during the run: that
is counted too. Requests carry no `traceparent`, so tollgate starts every
trace and samples it itself. Targets (issue 22): under 5% more than `off` at
1%, under 15% at 100%.
"""

import argparse
import http.server
import sys
import threading

from callgrind_ab import (CONNECTIONS, alternate, base_config, ensure_valgrind, free_port, keepalive_load,
                          measure, start_backend)

TARGETS = {"IDs + tracing 1%": 0.05, "IDs + tracing 100%": 0.15}


class Collector(http.server.BaseHTTPRequestHandler):
    """Takes an OTLP/HTTP export and answers it with an empty (valid) protobuf response."""
    protocol_version = "HTTP/1.1"
    exports = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Collector.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def arm_config(backend, collector, sample):
    """The `server:` lines of an arm: None is off, "" request IDs alone."""
    if sample is None:
        return ""
    ids = "  request_id: {header: X-Request-Id}\n"
    if sample == "":
        return ids
    return ids + f"  tracing: {{otlp: \"http://127.0.0.1:{collector}\", sample: {sample}}}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tollgate", required=True)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_valgrind()
    backend, backend_port = start_backend()
    collector_port = free_port()
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", collector_port), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    per_connection = args.requests // CONNECTIONS

    def run(sample):
        server = arm_config(backend_port, collector_port, sample)
        return measure(args.tollgate, lambda tmp, port: base_config(tmp, port, backend_port, server_extra=server),
                       lambda port, n: keepalive_load(port, n, per_connection), args.requests)

    arms = [("off", None), ("request IDs", ""), ("IDs + tracing 1%", "1%"), ("IDs + tracing 100%", "100%")]
    print(f"\nRequest IDs and tracing A/B: {CONNECTIONS} keep-alive connections, {args.requests} requests, "
          f"median of {args.rounds} (callgrind instructions per request):", flush=True)
    try:
        medians = alternate([(name, lambda s=sample: run(s)) for name, sample in arms], args.rounds, "tracing")
    finally:
        backend.shutdown()
        collector.shutdown()
    base = medians["off"]
    for name, value in medians.items():
        if name == "off":
            continue
        more = (value - base) / base
        target = TARGETS.get(name)
        verdict = "" if target is None else (f"  target < {target:.0%}: " + ("met" if more < target else "MISSED"))
        print(f"  {name} - off: {value - base:+,.0f} per request ({more:+.2%}){verdict}")
    print(f"  the sink took {Collector.exports} OTLP exports", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
