"""The tutorial's product service (Flask), one replica per process.

    product_service.py --listen 127.0.0.1:9001 --name product-1 --auth http://127.0.0.1:7000

- GET /public/product/all lists the products (public).
- GET /protected/product/<id>/ trusts X-Auth-User and X-Auth-Role from the
  gateway, asks the auth service for the role's permissions, and answers 403
  when they lack `product:view`.

Every answer names the replica in `X-Backend`. Prints `listening on ADDR` once bound.
"""

import argparse
import json
import logging
import urllib.parse
import urllib.request

from flask import Flask, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

PRODUCTS = {1: "poster", 2: "mug", 3: "t-shirt"}


class WholeAnswers(WSGIRequestHandler):
    """Sends each answer in one write, head and body together (Werkzeug writes
    them apart), as production servers do for small answers: a replica killed
    between two answers never leaves half of one behind, which no proxy could
    hide once the head has reached the client."""

    wbufsize = -1


def create_app(name, auth_url):
    app = Flask(__name__)
    permissions_of = {}

    def permissions(role):
        if role not in permissions_of:
            query = urllib.parse.urlencode({"role": role})
            with urllib.request.urlopen(f"{auth_url}/public/auth/permissions?{query}", timeout=2) as answer:
                permissions_of[role] = json.load(answer)["permissions"]
        return permissions_of[role]

    @app.after_request
    def name_the_replica(response):
        response.headers["X-Backend"] = name
        return response

    @app.get("/public/product/all")
    def all_products():
        return jsonify(products=[{"id": i, "name": n} for i, n in PRODUCTS.items()], served_by=name)

    @app.get("/protected/product/<int:product_id>/")
    def one_product(product_id):
        user, role = request.headers.get("X-Auth-User"), request.headers.get("X-Auth-Role")
        if not user or "product:view" not in permissions(role or ""):
            return jsonify(message="Forbidden"), 403
        if product_id not in PRODUCTS:
            return jsonify(message="Not Found"), 404
        return jsonify(id=product_id, name=PRODUCTS[product_id], user=user, role=role, served_by=name)

    @app.get("/health")
    def health():
        return "ok\n"

    return app


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:9001")
    parser.add_argument("--name", default="product")
    parser.add_argument("--auth", default="http://127.0.0.1:7000")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server(
        host, int(port), create_app(args.name, args.auth), threaded=True, request_handler=WholeAnswers
    )
    print(f"listening on {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
