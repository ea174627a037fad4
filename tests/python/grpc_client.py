"""A gRPC client (grpcio) for tests/grpc.rs: makes one call and reports it.

    grpc_client.py TARGET METHOD DATA [--stream] [--timeout SECONDS]
                   [--ca CA.pem --server-name NAME] [--metadata KEY=VALUE ...]

METHOD is a full path (`/tollgate.test.Echo/Unary`), DATA the request bytes
as text. Over TLS when --ca is given (the certificate is checked against
--server-name), else cleartext HTTP/2 (h2c). Prints one JSON line per
message received ({"message": ...}) as it arrives, then the outcome:
{"code": "OK", "details": ..., "trailers": {...}}.
"""

import argparse
import json
import sys

import grpc


def identity(data):
    return data


def report(**fields):
    print(json.dumps(fields), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("method")
    parser.add_argument("data")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--ca")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--metadata", action="append", default=[])
    args = parser.parse_args()
    metadata = tuple(tuple(pair.split("=", 1)) for pair in args.metadata)
    if args.ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=open(args.ca, "rb").read())
        options = (("grpc.ssl_target_name_override", args.server_name),)
        channel = grpc.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    request = args.data.encode()
    kwargs = {"timeout": args.timeout, "metadata": metadata}
    try:
        if args.stream:
            call = channel.unary_stream(
                args.method, request_serializer=identity, response_deserializer=identity
            )(request, **kwargs)
            for message in call:
                report(message=message.decode(errors="replace"))
        else:
            message, call = channel.unary_unary(
                args.method, request_serializer=identity, response_deserializer=identity
            ).with_call(request, **kwargs)
            report(message=message.decode(errors="replace"))
        code, details, trailers = call.code(), call.details(), call.trailing_metadata()
    except grpc.RpcError as error:
        code, details, trailers = error.code(), error.details(), error.trailing_metadata()
    report(
        code=code.name,
        details=details or "",
        trailers={key: value for key, value in (trailers or ())},
    )
    channel.close()


if __name__ == "__main__":
    sys.exit(main())
