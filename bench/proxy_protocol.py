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
import struct
import sys

from callgrind_ab import (CONNECTIONS, alternate, base_config, ensure_valgrind, keepalive_load, measure,
                          start_backend)


def v2_header(client_index, port):
    """A PROXY v2 header (PROXY command, TCP over IPv4) naming 10.1.0.N as the client."""
    addresses = bytes([10, 1, 0, client_index + 1, 127, 0, 0, 1]) + struct.pack("!HH", 40000 + client_index, port)
    return b"\r\n\r\n\0\r\nQUIT\n\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def config(tmp, port, backend, proxy_protocol):
    return base_config(tmp, port, backend, "      proxy_protocol: v2\n" if proxy_protocol else "")


def measure_arm(tollgate, backend_port, proxy_protocol, requests, per_connection):
    """Instructions per request of one callgrind run; with `proxy_protocol`
    each connection begins with a PROXY v2 header."""
    prelude = v2_header if proxy_protocol else None
    return measure(tollgate, lambda tmp, port: config(tmp, port, backend_port, proxy_protocol),
                   lambda port, n: keepalive_load(port, n, per_connection, prelude), requests)


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
    print(f"\nPROXY protocol A/B, {label}: {CONNECTIONS} connections at a time, {per_connection} "
          f"request(s) each, {args.requests} requests, median of {args.rounds} "
          f"(callgrind instructions per request):", flush=True)
    medians = alternate(
        [(f"proxy_protocol {arm}", lambda b=binary, p=pp: measure_arm(b, backend_port, p, args.requests, per_connection))
         for arm, binary, pp in arms],
        args.rounds, label)
    medians = {name.removeprefix("proxy_protocol "): value for name, value in medians.items()}
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
    backend, backend_port = start_backend()
    try:
        for name in names:
            run_scenario(args, backend_port, name)
    finally:
        backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
