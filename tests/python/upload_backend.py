"""A Flask service on Werkzeug's server (the tutorial's `flask run`) that takes
uploads, for the request-buffering tests.

Prints `listening on 127.0.0.1:PORT` once bound. Every request is answered with
JSON saying what the service received: the body's `length` and `sha256`, and
the `Content-Length`, `Transfer-Encoding`, `Expect`, `X-Forwarded-For` and
`X-User` headers it saw (null when absent).
"""

import hashlib
import json
import logging

from flask import Flask, request
from werkzeug.serving import make_server

app = Flask(__name__)


@app.route("/", defaults={"rest": ""}, methods=["POST", "PUT", "GET"])
@app.route("/<path:rest>", methods=["POST", "PUT", "GET"])
def upload(rest):
    body = request.get_data()
    seen = {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_length": request.headers.get("Content-Length"),
        "transfer_encoding": request.headers.get("Transfer-Encoding"),
        "expect": request.headers.get("Expect"),
        "forwarded_for": request.headers.get("X-Forwarded-For"),
        "user": request.headers.get("X-User"),
    }
    return app.response_class(json.dumps(seen), mimetype="application/json")


if __name__ == "__main__":
    # One line per request on stderr would fill the pipe the test never reads.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
