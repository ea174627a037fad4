"""HTTP/3 client of tests/http3.rs and the bench (aioquic, QUIC and HTTP/3 in Python).

One mode per use:

  h3_client.py ADDR requests FILE   [--ca PEM] [--server-name NAME]
      FILE is a JSON list of {"method", "path", "headers": [[k, v]], "body"};
      all are sent at once, each on its own stream of ONE connection (one
      after the other with --sequential). Prints a
      JSON object: {"responses": [{"status", "headers", "body", "stream_id"}
      or {"error"}], "elapsed_ms", "connections": 1}.

  h3_client.py ADDR load SECONDS   [--concurrency C] [--connections K] [--path P]
      K connections, C requests in flight on each, for SECONDS (or until the
      file given by --stop-file exists). A GOAWAY (RFC 9114 5.2) moves the
      client to a new connection; a request the server did not process (still
      waiting when it closes with H3_NO_ERROR after its GOAWAY) counts as
      "retried", as the RFC lets a client send it again. Prints
      {"ok", "failed", "retried", "errors", "seconds", "goaways",
       "connections", "statuses"}.

  h3_client.py ADDR flood COUNT
      COUNT connection attempts' first (Initial) packets from one UDP socket,
      never followed up: handshakes the server holds open until they time
      out, as a flood of Initials from spoofed addresses makes it. Prints
      {"sent"}.

The server's certificate is checked against --ca (default: not checked).
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset


class GoawayH3Connection(H3Connection):
    """aioquic's HTTP/3 connection, noting the server's GOAWAY (aioquic reads
    past it: its payload, the id of the first request not processed, is not
    kept)."""

    goaway = False

    def _check_control_frame_type(self, frame_type):
        super()._check_control_frame_type(frame_type)
        if frame_type == FrameType.GOAWAY:
            self.goaway = True


H3_NO_ERROR = 0x100


class Refused(Exception):
    """The request was not processed by the server (after its GOAWAY id, or
    the connection was gone before it was sent): safe to send again."""


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = GoawayH3Connection(self._quic)
        self.streams = {}
        self.closed = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            for stream_id, (future, _) in list(self.streams.items()):
                if not future.done():
                    why = f"connection closed: {event.reason_phrase or event.error_code}"
                    future.set_exception(self.lost(stream_id, why, event.error_code))
            self.streams.clear()
            if not self.closed.done():
                self.closed.set_result(True)
            return
        if isinstance(event, StreamReset) and event.stream_id in self.streams:
            future, _ = self.streams.pop(event.stream_id)
            if not future.done():
                future.set_exception(self.lost(event.stream_id, f"stream reset {event.error_code:#x}"))
            return
        for h3_event in self.http.handle_event(event):
            self.http_event(h3_event)

    def lost(self, stream_id, why, error_code=None):
        # After its GOAWAY, a server that closes with H3_NO_ERROR has finished
        # every request it processed: the ones still waiting were not (what the
        # GOAWAY's id would say).
        if self.http.goaway and error_code == H3_NO_ERROR:
            return Refused(why)
        return RuntimeError(why)

    def http_event(self, event):
        entry = self.streams.get(event.stream_id)
        if entry is None:
            return
        future, response = entry
        if isinstance(event, HeadersReceived):
            if "status" not in response:
                response["headers"] = [[k.decode(), v.decode()] for k, v in event.headers]
                response["status"] = int(dict(event.headers)[b":status"])
            else:
                response["trailers"] = [[k.decode(), v.decode()] for k, v in event.headers]
        elif isinstance(event, DataReceived):
            response["body"] += event.data
        if event.stream_ended:
            self.streams.pop(event.stream_id, None)
            future.set_result(response)

    @property
    def usable(self):
        return not self.closed.done() and not self.http.goaway

    async def request(self, method, path, headers=(), body=b""):
        if not self.usable:
            raise Refused("connection going away")
        stream_id = self._quic.get_next_available_stream_id()
        head = [(b":method", method.encode()), (b":scheme", b"https"),
                (b":authority", self.authority.encode()), (b":path", path.encode())]
        head += [(k.lower().encode(), v.encode()) for k, v in headers]
        future = asyncio.get_event_loop().create_future()
        self.streams[stream_id] = (future, {"body": b"", "stream_id": stream_id})
        self.http.send_headers(stream_id, head, end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return await future


def configuration(args):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               server_name=args.server_name, max_datagram_frame_size=None)
    if args.ca:
        config.load_verify_locations(args.ca)
    else:
        config.verify_mode = ssl.CERT_NONE
    return config


class Opened:
    """A connection to ADDR, its requests' :authority the server name and port
    (as HTTP/2 clients send it)."""

    def __init__(self, args):
        host, port = args.addr.rsplit(":", 1)
        self.authority = f"{args.server_name}:{port}"
        self.inner = connect(host.strip("[]"), int(port), configuration=configuration(args),
                             create_protocol=Client, wait_connected=True)

    async def __aenter__(self):
        client = await self.inner.__aenter__()
        client.authority = self.authority
        return client

    async def __aexit__(self, *exc):
        return await self.inner.__aexit__(*exc)


def opened(args):
    return Opened(args)


def shown(response):
    body = response["body"]
    response["body"] = body.decode("utf-8", errors="replace")
    response["body_len"] = len(body)
    return response


async def run_requests(args):
    with open(args.target) as f:
        requests = json.load(f)
    started = time.monotonic()
    # Held: the connection closes when this context is dropped.
    context = opened(args)
    try:
        client = await asyncio.wait_for(context.__aenter__(), args.connect_timeout)
    except Exception as e:
        print(json.dumps({"error": f"connect: {type(e).__name__}: {e}"}))
        return
    try:
        async def one(r):
            body = r.get("body", "").encode()
            try:
                return shown(await client.request(r.get("method", "GET"), r["path"],
                                                  r.get("headers", []), body))
            except Exception as e:  # reported, not raised: the test decides
                return {"error": f"{type(e).__name__}: {e}"}
        if args.sequential:
            responses = [await one(r) for r in requests]
        else:
            responses = await asyncio.gather(*(one(r) for r in requests))
    finally:
        await context.__aexit__(None, None, None)
    print(json.dumps({"responses": responses,
                      "elapsed_ms": (time.monotonic() - started) * 1000.0,
                      "connections": 1}))


class Load:
    def __init__(self, args):
        self.args = args
        self.ok = self.failed = self.retried = self.goaways = self.connections = 0
        self.errors = []
        self.statuses = {}
        self.deadline = time.monotonic() + float(args.target)

    def running(self):
        if self.args.stop_file and os.path.exists(self.args.stop_file):
            return False
        return time.monotonic() < self.deadline

    async def lane(self):
        """One connection's worth of load, moving to a new connection on GOAWAY."""
        while self.running():
            try:
                async with opened(self.args) as client:
                    self.connections += 1
                    await asyncio.gather(*(self.loop(client) for _ in range(self.args.concurrency)))
                    if client.http.goaway:
                        self.goaways += 1
            except Refused:
                self.retried += 1
            except Exception as e:
                self.failed += 1
                self.errors.append(f"connect: {type(e).__name__}: {e}")
                await asyncio.sleep(0.05)

    async def loop(self, client):
        while self.running() and client.usable:
            try:
                response = await client.request("GET", self.args.path)
            except Refused:
                self.retried += 1
                return
            except Exception as e:
                self.failed += 1
                self.errors.append(f"{type(e).__name__}: {e}")
                return
            status = response["status"]
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if 200 <= status < 400:
                self.ok += 1
            else:
                self.failed += 1
                self.errors.append(f"status {status}")


async def run_load(args):
    load = Load(args)
    started = time.monotonic()
    await asyncio.gather(*(load.lane() for _ in range(args.connections)))
    print(json.dumps({"ok": load.ok, "failed": load.failed, "retried": load.retried,
                      "errors": load.errors[:20], "seconds": time.monotonic() - started,
                      "goaways": load.goaways, "connections": load.connections,
                      "statuses": load.statuses}))


async def run_flood(args):
    import socket
    from aioquic.quic.connection import QuicConnection
    host, port = args.addr.rsplit(":", 1)
    target = (host.strip("[]"), int(port))
    sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for _ in range(int(args.target)):
        connection = QuicConnection(configuration=configuration(args))
        connection.connect(target, now=time.time())
        for data, _ in connection.datagrams_to_send(now=time.time()):
            sock.sendto(data, target)
        sent += 1
    print(json.dumps({"sent": sent}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("addr")
    parser.add_argument("mode", choices=["requests", "load", "flood"])
    parser.add_argument("target", help="requests: a JSON file; load: seconds")
    parser.add_argument("--ca")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--path", default="/")
    parser.add_argument("--stop-file")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    args = parser.parse_args()
    run = {"requests": run_requests, "load": run_load, "flood": run_flood}[args.mode]
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
