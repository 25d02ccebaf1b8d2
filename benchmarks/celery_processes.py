"""The processes and the broker of ``celery_faults.py``: Celery workers started (and SIGKILLed)
as docker-compose runs them, a stand-in for beat, the admin's API calls, and what a killed
worker left unacknowledged in Redis."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tests.processes import ROOT, wait_for

BROKER_KEYS = ("gpu", "default", "unacked", "unacked_index", "unacked_mutex")  # kombu's, on this script's broker database


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Worker:
    """``celery worker`` (prefork, one pool child) in its own session, so a kill reaches both."""

    def __init__(self, name: str, queues: str, env: dict, log: Path):
        self.name, self.log = name, log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--queues", queues, "--concurrency", "1",
                 "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname", f"{name}@%h"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: "ready." in log.read_text(), timeout=180, what=f"celery worker {name}", proc=self.proc, log=log)
        except BaseException:
            self.stop()
            raise

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in out]

    def sigkill(self, mode: str) -> str:
        """SIGKILL; says which processes."""
        kids = self.children()
        if mode == "child":
            for pid in kids:
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not any(alive(p) for p in kids), timeout=10, what="the pool child to die")
            return f"pool child pid {kids} (running the task; main {self.proc.pid} lives on)"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_for(lambda: not any(alive(p) for p in kids), timeout=10, what="the pool child to die")
        return f"main pid {self.proc.pid} and pool child pid {kids} (running the task)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class Beat(threading.Thread):
    """Beat's refill and sweep, sent by name to the default queue every ``every`` seconds."""

    def __init__(self, every: float):
        super().__init__(daemon=True)
        self.every, self.done = every, threading.Event()

    def run(self) -> None:
        from annotation.enqueue import enqueue

        while True:
            for task in ("refill_buffers", "sweep_stale"):
                try:
                    enqueue(task)
                except Exception as exc:  # noqa: BLE001 - a beat that cannot reach the broker tries again
                    print(f"beat: {task} not sent: {exc}", flush=True)
            if self.done.wait(self.every):
                return


def broker_client(url: str):
    import redis

    return redis.Redis.from_url(url)


def api(base: str, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def lost_messages(ctx: dict, args, run_id: int | None = None) -> dict[str, str]:
    """Delivery tag -> ``task[id]`` of this script's unacknowledged ``sample_pairs`` (its
    campaign) and ``gpu_train`` (run ``run_id``) messages: what a killed worker left in Redis."""
    mine = {"workers.tasks.sample_pairs": ctx["sample"], "workers.tasks.gpu_train": run_id}
    lost = {}
    for tag, raw in broker_client(args.broker).hgetall("unacked").items():
        payload = json.loads(raw)[0]
        headers = payload.get("headers") or {}
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        if headers.get("task") in mine and json.loads(body)[0][:1] == [mine[headers["task"]]]:
            lost[tag.decode()] = f"{headers['task']}[{headers['id']}]"
    return lost
