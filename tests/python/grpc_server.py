"""A gRPC server (grpcio) for tests/grpc.rs and the bench, without generated
code: the methods of service `tollgate.test.Echo` take and return raw bytes,
and the standard health service (grpcio-health-checking) answers beside them.

    grpc_server.py --listen 127.0.0.1:0 --name NAME [--tls CERT KEY]

Prints `listening on ADDR` once bound. Methods:
- Unary: answers `NAME:` + the request, with trailing metadata x-backend: NAME.
- Fail: fails with FAILED_PRECONDITION "bad precondition" and trailing
  metadata x-reason: failed-on-purpose.
- Sleep: sleeps the milliseconds the request says, then answers `NAME:slept`.
- Count (server streaming): the request is `N,MS`; sends `NAME:0` ..
  `NAME:N-1`, MS milliseconds apart.
- SetHealth: the request is SERVING or NOT_SERVING, for the health service's
  overall status ("").
- Bench (unary): answers the request as it is, nothing more.
"""

import argparse
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "tollgate.test.Echo"


def identity(data):
    return data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--name", default="grpc")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()
    name = args.name.encode()
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    def unary(request, context):
        context.set_trailing_metadata((("x-backend", args.name),))
        return name + b":" + request

    def fail(request, context):
        context.set_trailing_metadata((("x-reason", "failed-on-purpose"),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bad precondition")

    def sleep(request, context):
        time.sleep(int(request.decode() or "0") / 1000)
        return name + b":slept"

    def count(request, context):
        n, interval = (int(part) for part in request.decode().split(","))
        for i in range(n):
            if i:
                time.sleep(interval / 1000)
            yield name + b":" + str(i).encode()

    def set_health(request, context):
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(request.decode())
        health_servicer.set("", status)
        return request

    def bench(request, context):
        return request

    def unary_handler(behaviour):
        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=identity, response_serializer=identity
        )

    handlers = {
        "Unary": unary_handler(unary),
        "Fail": unary_handler(fail),
        "Sleep": unary_handler(sleep),
        "SetHealth": unary_handler(set_health),
        "Bench": unary_handler(bench),
        "Count": grpc.unary_stream_rpc_method_handler(
            count, request_deserializer=identity, response_serializer=identity
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if args.tls:
        cert, key = (open(path, "rb").read() for path in args.tls)
        credentials = grpc.ssl_server_credentials(((key, cert),))
        port = server.add_secure_port(args.listen, credentials)
    else:
        port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"listening on {host}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
