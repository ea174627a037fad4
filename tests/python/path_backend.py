"""A backend in a framework users run, for the request-path tests.

    path_backend.py flask|flask-wsgiref|starlette

`flask` runs on Werkzeug's server (the tutorial's `flask run`), `flask-wsgiref` on
the standard library's WSGI server, which folds `_` into `-` in header names as
CGI does, and `starlette` on uvicorn.

Prints `listening on 127.0.0.1:PORT` once bound. Every request is answered with
JSON saying how the framework itself read it: `path` is the path the framework
routes on (decoded, as it decodes), `served` is `protected` when that path is in
the app's protected area (`/protected` and below, like the tutorial's
`/protected/product/<id>/`) and `public` otherwise, and `user` is the
`X-Auth-User` the framework sees (WSGI folds `X_Auth_User` into it too).
"""

import json
import socket
import sys


def describe(framework, path, user):
    served = "protected" if path == "/protected" or path.startswith("/protected/") else "public"
    return json.dumps({"framework": framework, "served": served, "path": path, "user": user})


def bound_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def flask_app():
    from flask import Flask, request

    app = Flask(__name__)

    @app.route("/", defaults={"rest": ""}, methods=["GET", "POST", "HEAD"])
    @app.route("/<path:rest>", methods=["GET", "POST", "HEAD"])
    def everything(rest):
        body = describe("flask", request.path, request.headers.get("X-Auth-User"))
        return app.response_class(body, mimetype="application/json")

    return app


def run_flask():
    import logging

    from werkzeug.serving import make_server

    # One line per request on stderr would fill the pipe the test never reads.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, flask_app(), threaded=True)
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


def run_flask_wsgiref():
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Threaded(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = Threaded(("127.0.0.1", 0), Quiet)
    server.set_app(flask_app())
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


def run_starlette():
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def everything(request):
        body = describe("starlette", request.scope["path"], request.headers.get("x-auth-user"))
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/{rest:path}", everything, methods=["GET", "POST", "HEAD"])])
    sock = bound_socket()
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    runners = {"flask": run_flask, "flask-wsgiref": run_flask_wsgiref, "starlette": run_starlette}
    runners[sys.argv[1]]()
