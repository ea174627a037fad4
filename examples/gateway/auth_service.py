"""The tutorial's auth service (Flask), as tollgate's gateway example runs it.

    auth_service.py --listen 127.0.0.1:7000 [--token-ttl SECONDS]

- POST /public/auth/login with HTTP Basic credentials answers
  {"token": "<HS256 JWT with username, role, iat, exp>"} (401 otherwise).
  Users: admin / admin-password (role admin), gues / gues-password (role guest).
- GET /public/auth/token/info?access_token=TOKEN answers 200 with the token's
  claims as JSON, 400 when the token is invalid or expired.
- GET /public/auth/permissions?role=R lists the role's permissions.

The signing secret comes from AUTH_SECRET (a demo default otherwise). Prints
`listening on ADDR` once bound, so a caller may pass port 0.
"""

import argparse
import logging
import os
import time

import jwt
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

SECRET = os.environ.get("AUTH_SECRET", "tutorial-demo-secret-change-me")
USERS = {"admin": ("admin-password", "admin"), "gues": ("gues-password", "guest")}
PERMISSIONS = {
    "admin": ["product:list", "product:view", "product:edit"],
    "guest": ["product:list"],
}


def create_app(token_ttl):
    app = Flask(__name__)

    @app.post("/public/auth/login")
    def login():
        credentials = request.authorization
        user = USERS.get(credentials.username) if credentials else None
        if user is None or credentials.password != user[0]:
            return jsonify(message="Unauthorized"), 401, {"WWW-Authenticate": 'Basic realm="login"'}
        now = int(time.time())
        claims = {"username": credentials.username, "role": user[1], "iat": now, "exp": now + token_ttl}
        return jsonify(token=jwt.encode(claims, SECRET, algorithm="HS256"))

    @app.get("/public/auth/token/info")
    def token_info():
        try:
            claims = jwt.decode(request.args.get("access_token", ""), SECRET, algorithms=["HS256"])
        except jwt.PyJWTError as e:
            return jsonify(message=f"invalid token: {e}"), 400
        return jsonify(claims)

    @app.get("/public/auth/permissions")
    def permissions():
        role = request.args.get("role", "")
        return jsonify(role=role, permissions=PERMISSIONS.get(role, []))

    @app.get("/health")
    def health():
        return "ok\n"

    return app


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:7000")
    parser.add_argument("--name", default="auth")
    parser.add_argument("--token-ttl", type=int, default=3600)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server(host, int(port), create_app(args.token_ttl), threaded=True)
    print(f"listening on {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
