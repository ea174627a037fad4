"""The request-path table of the README: tollgate and nginx side by side.

    make path-table       (builds tollgate, installs nginx and the frameworks)

Both gateways front the same Flask (Werkzeug) and Starlette (uvicorn) backends
with an authenticated `/protected/` and a public catch-all; every path spelling
of tests/request_paths.rs is sent without credentials. A cell says what the
client got: `auth` (the gateway's auth step answered 401), `400`, a redirect,
`public` (the backend served a public path) or `PROTECTED` (the backend served
its protected area to a client that never authenticated).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTS = ("flask.test", "starlette.test")


def spellings():
    """The SPELLINGS table of tests/request_paths.rs, so both lists are one."""
    text = open(os.path.join(ROOT, "tests", "request_paths.rs")).read()
    block = text[text.index("const SPELLINGS"):]
    block = block[: block.index("];")]
    return [path.replace("\\\\", "\\") for path in re.findall(r'\("((?:[^"\\]|\\.)*)", Expect::', block)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_backend(framework):
    python = os.path.join(ROOT, "target", "python", "bin", "python3")
    script = os.path.join(ROOT, "tests", "python", "path_backend.py")
    proc = subprocess.Popen([python, script, framework], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    return proc, int(line.strip().rsplit(":", 1)[1])


def ask(port, host, path):
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    if status == 401:
        return "auth"
    if status in (301, 308):
        return f"{status}"
    if '"served": "protected"' in body:
        return "**PROTECTED**"
    if '"served": "public"' in body:
        return "public"
    return str(status)


def tollgate_config(port, flask, starlette, workdir):
    routes = ""
    for host, upstream in zip(HOSTS, ("flask", "starlette")):
        routes += (
            f"  - match: {{host: {host}, path_prefix: /protected/}}\n    upstream: {upstream}\n    auth: users\n"
            f"  - match: {{host: {host}, path_prefix: /}}\n    upstream: {upstream}\n"
        )
    return (
        f"server:\n  listeners:\n    - address: 127.0.0.1:{port}\n  access_log: off\n"
        f"  pid_file: {workdir}/tollgate.pid\n  upgrade_sock: {workdir}/upgrade.sock\n"
        f"upstreams:\n  flask: {{backends: [{{address: 127.0.0.1:{flask}}}]}}\n"
        f"  starlette: {{backends: [{{address: 127.0.0.1:{starlette}}}]}}\n"
        "auth:\n  users:\n    jwt: {algorithms: [HS256], secret_env: TABLE_SECRET}\n"
        f"routes:\n{routes}"
    )


def nginx_config(port, flask, starlette, workdir):
    servers = ""
    for host, backend in zip(HOSTS, (flask, starlette)):
        servers += f"""
  server {{
    listen 127.0.0.1:{port};
    server_name {host};
    location /protected/ {{ auth_request /_auth; proxy_pass http://127.0.0.1:{backend}; }}
    location = /_auth {{ internal; return 401; }}
    location / {{ proxy_pass http://127.0.0.1:{backend}; }}
  }}"""
    return f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
  uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
{servers}
}}
"""


def main():
    tollgate = os.path.join(ROOT, "target", "release", "tollgate")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    workdir = tempfile.mkdtemp(prefix="tollgate-path-table-")
    procs = []
    try:
        flask, flask_port = start_backend("flask")
        starlette, starlette_port = start_backend("starlette")
        procs += [flask, starlette]
        tg_port, nginx_port = free_port(), free_port()
        with open(f"{workdir}/tollgate.yaml", "w") as f:
            f.write(tollgate_config(tg_port, flask_port, starlette_port, workdir))
        with open(f"{workdir}/nginx.conf", "w") as f:
            f.write(nginx_config(nginx_port, flask_port, starlette_port, workdir))
        env = dict(os.environ, TABLE_SECRET="compare-nginx-secret")
        procs.append(subprocess.Popen([tollgate, "-c", f"{workdir}/tollgate.yaml"], env=env, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([nginx, "-c", f"{workdir}/nginx.conf", "-p", workdir], stderr=subprocess.DEVNULL))
        wait_port(tg_port)
        wait_port(nginx_port)
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        print(f"<!-- {version}; Flask 3.1 on Werkzeug, Starlette 1.10 on uvicorn -->")
        print("| path sent, no credentials | tollgate: Flask | tollgate: Starlette | nginx: Flask | nginx: Starlette |")
        print("|---|---|---|---|---|")
        for path in spellings():
            cells = [ask(tg_port, h, path) for h in HOSTS] + [ask(nginx_port, h, path) for h in HOSTS]
            shown = path.replace("|", "\\|")
            print(f"| `{shown}` | " + " | ".join(cells) + " |")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
