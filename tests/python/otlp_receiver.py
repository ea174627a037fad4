"""An OTLP/HTTP trace receiver for tests/tracing.rs: takes what a collector
takes (`POST /v1/traces`, an `ExportTraceServiceRequest` in protobuf) and
decodes it with the official `opentelemetry-proto` package.

Prints `listening on 127.0.0.1:PORT` once bound. `GET /spans` answers every
span received so far as a JSON list, each with its resource's `service.name`,
its `trace_id`, `span_id` and `parent_span_id` in hex, `name`, `kind`,
`status` (the status code's number) and `status_message`, start and end in nanoseconds, and its
attributes as an object. `GET /posts` answers how many exports arrived.

Options: `--delay SECONDS` answers each export that late (a slow collector);
`--status CODE` answers exports with that status (a failing one).
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = []
POSTS = [0]
LOCK = threading.Lock()


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def spans_of(request):
    for resource_spans in request.resource_spans:
        resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service_name": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "status": span.status.code,
                    "status_message": span.status.message,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {a.key: value_of(a.value) for a in span.attributes},
                }


def handler(delay, status):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, code, body, content_type):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with LOCK:
                if self.path == "/spans":
                    body = json.dumps(SPANS).encode()
                elif self.path == "/posts":
                    body = json.dumps(POSTS[0]).encode()
                else:
                    return self.answer(404, b"", "text/plain")
            self.answer(200, body, "application/json")

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path != "/v1/traces":
                return self.answer(404, b"", "text/plain")
            if self.headers.get("Content-Type") != "application/x-protobuf":
                return self.answer(415, b"", "text/plain")
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            if delay:
                threading.Event().wait(delay)
            with LOCK:
                POSTS[0] += 1
                if status == 200:
                    SPANS.extend(spans_of(request))
            reply = ExportTraceServiceResponse().SerializeToString()
            self.answer(status, reply, "application/x-protobuf")

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler(args.delay, args.status))
    server.daemon_threads = True
    print(f"listening on {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
