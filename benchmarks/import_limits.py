"""Import uploads at their limits, through the real API view under gunicorn (issue 13).

Two measurements, each on a fresh gunicorn (one sync worker) on the embedded SQLite default in a
temporary directory:

1. bad lines: a JSONL prompt file of 2,000,000 bad lines (22 MB) POSTed to
   ``/api/campaigns/<slug>/prompts/import/``: the response's status and size in bytes, the wall
   time until the whole response is in, and the worker's peak RSS (VmHWM from
   ``/proc/<worker>/status``, the worker having served nothing else; its RSS before the upload
   is given beside it).
2. too large: a 201 MiB file (over ``limits.MAX_UPLOAD_BYTES``, 200 MiB): the time from the
   first byte sent until the refusal arrives, its status, and how much of the body the client
   could send before it (the kernel's socket buffers take a few MB that nobody reads).

    python benchmarks/import_limits.py            # 2,000,000 lines and a 201 MiB upload
    python benchmarks/import_limits.py --quick    # 200,000 lines; the 201 MiB refusal as well

It needs only the project's requirements (gunicorn is one) and writes only under a temporary
directory. Runs on any checkout: on one from before the limits it measures the old behaviour (a
body read whole, every error listed). The last line is ``RESULT name=value ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import harness  # noqa: E402
BAD_LINE = b'{"x": 123}\n'  # 11 bytes: valid JSON, but no prompt: one reported bad line each
BOUNDARY = "PrefloopBenchBoundary7f3a"
MB = 1024 * 1024


def django_env(var_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings.local", DJANGO_DEBUG="0", PREFLOOP_VAR=str(var_dir),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING")
    return env


SETUP = """
from rest_framework.authtoken.models import Token
from annotation import roles, services
services.campaign_create(slug="bench", name="Bench", guideline="Pick the better one.")
user = roles.user_create(username="bench-admin", password="bench-password-123", role=roles.ADMIN)
print("TOKEN", Token.objects.create(user=user).key)
"""


def setup_database(env: dict) -> str:
    """Migrate the temporary SQLite database; a campaign and an admin with an API token."""
    def manage(*args):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(f"manage.py {args[0]} failed:\n{out.stderr[-3000:]}")
        return out.stdout

    manage("migrate", "--noinput", "-v0")
    return manage("shell", "-c", SETUP).split("TOKEN", 1)[1].split()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A fresh gunicorn with one sync worker (as docker-compose runs it, with one worker)."""

    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1", "--timeout", "600", "--graceful-timeout", "5"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if self.worker_pid():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("gunicorn did not start")

    def warm(self, token: str) -> None:
        """One small request, so the worker has loaded Django before its memory is read."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=120) as s:
            s.sendall(f"GET /api/campaigns/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
                      "Connection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass

    def worker_pid(self) -> int | None:
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def worker_memory(self) -> dict:
        fields = {}
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    def worker_cpu_s(self) -> float:
        """The worker's CPU time (user + system) so far: beside the wall time, it tells a slow
        program from a busy machine."""
        fields = Path(f"/proc/{self.worker_pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def post_file(port: int, path: str, token: str, file: Path, name: str) -> dict:
    """POST ``file`` as a multipart upload over a raw socket, the body streamed from disk while the
    answer is awaited; returns status, response size, times and the bytes the client sent."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(head) + file.stat().st_size + len(tail)
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n"
               "Connection: close\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sent = [0]

    def send():
        try:
            sock.sendall(request + head)
            with file.open("rb") as f:
                while chunk := f.read(MB):
                    sock.sendall(chunk)
                    sent[0] += len(chunk)
            sock.sendall(tail)
        except OSError:
            pass  # the server answered and closed before taking the whole body

    start = time.perf_counter()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received, first = [], None
    try:
        while data := sock.recv(MB):
            if first is None:
                first = time.perf_counter() - start
            received.append(data)
    except ConnectionResetError:
        pass
    total = time.perf_counter() - start
    sock.close()
    sender.join(timeout=30)
    raw = b"".join(received)
    header, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in header.lower():
        body = dechunk(body)
    status = int(header.split(b" ", 2)[1]) if header else 0
    return {"status": status, "response_bytes": len(body), "first_byte_s": first, "wall_s": total,
            "body_sent_bytes": sent[0], "body": body}


def dechunk(data: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        at = end + 2 + size + 2


def summary(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return repr(body[:200])
    if "error" in doc:
        err = doc["error"]
        details = {k: v for k, v in err.get("details", {}).items() if k != "errors"}
        return f"error {err.get('code')}: {err.get('message', '')[:160]} {details}"
    shown = {k: v for k, v in doc.items() if k != "errors"}
    return f"{shown}, {len(doc.get('errors', []))} errors listed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200,000 bad lines instead of 2,000,000")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    n_lines = 200_000 if args.quick else 2_000_000
    busy = harness.busy_reason()
    print(f"WARNING: the machine is busy ({busy}): wall times are slower than the program" if busy else "machine idle: ok", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="prefloop-import-limits-"))
    try:
        env = django_env(tmp / "var")
        token = setup_database(env)
        bad = tmp / "bad.jsonl"
        bad.write_bytes(BAD_LINE * n_lines)
        big = tmp / "big.jsonl"
        with big.open("wb") as f:  # 201 MiB of good-looking lines: only its size matters
            line = b'{"prompt": "' + b"x" * 1000 + b'"}\n'
            for _ in range(201 * MB // len(line) + 1):
                f.write(line)
        print(f"files: {bad.stat().st_size} bytes ({n_lines} bad lines), {big.stat().st_size} bytes", flush=True)

        server = Server(env, tmp / "gunicorn-bad.log")
        try:
            server.warm(token)
            before, cpu0 = server.worker_memory(), server.worker_cpu_s()
            bad_result = post_file(server.port, "/api/campaigns/bench/prompts/import/", token, bad, "bad.jsonl")
            after, cpu = server.worker_memory(), server.worker_cpu_s() - cpu0
        finally:
            server.stop()
        print(f"bad lines: HTTP {bad_result['status']}, {bad_result['response_bytes']} response bytes in "
              f"{bad_result['wall_s']:.2f} s (worker CPU {cpu:.2f} s); worker RSS {before['VmRSS'] / MB:.0f} MB before, peak "
              f"{after['VmHWM'] / MB:.0f} MB ({summary(bad_result['body'])})", flush=True)

        server = Server(env, tmp / "gunicorn-big.log")
        try:
            server.warm(token)
            big_before = server.worker_memory()
            big_result = post_file(server.port, "/api/campaigns/bench/prompts/import/", token, big, "big.jsonl")
            big_after = server.worker_memory()
        finally:
            server.stop()
        print(f"201 MiB upload: HTTP {big_result['status']} after {big_result['first_byte_s']:.3f} s "
              f"(client had sent {big_result['body_sent_bytes'] / MB:.1f} MiB of the file); worker peak RSS "
              f"{big_after['VmHWM'] / MB:.0f} MB (before {big_before['VmRSS'] / MB:.0f} MB) ({summary(big_result['body'])})",
              flush=True)
        print(
            f"RESULT bad_lines={n_lines} upload_bytes={bad.stat().st_size} status={bad_result['status']} "
            f"response_bytes={bad_result['response_bytes']} wall_s={bad_result['wall_s']:.2f} worker_cpu_s={cpu:.2f} "
            f"worker_rss_before_mb={before['VmRSS'] / MB:.0f} worker_peak_rss_mb={after['VmHWM'] / MB:.0f} "
            f"too_large_status={big_result['status']} too_large_refusal_s={big_result['first_byte_s']:.3f} "
            f"too_large_sent_mib={big_result['body_sent_bytes'] / MB:.1f} too_large_worker_peak_rss_mb={big_after['VmHWM'] / MB:.0f}"
        )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
