"""`emailq dev`: one command runs the whole pipeline on a fresh machine; Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import psutil

from conftest import EMAILQ, free_port, wait_for

from emailq import embedded_redis

SIGN_IN = {"to": "you@example.com", "type": "SignIn", "payload": {"code": "123456"}}


def test_dev_delivers_a_first_email_and_stops_on_ctrl_c(data_dir: Path, tmp_path: Path):
    ingest, flower, endpoint = free_port(), free_port(), free_port()
    log = tmp_path / "dev.log"
    process = subprocess.Popen(
        [EMAILQ, "dev", "--ingest-port", str(ingest), "--flower-port", str(flower), "--endpoint-port", str(endpoint)],
        env={**os.environ, "EMAILQ_DATA_DIR": str(data_dir)},
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:

        def ready(url: str) -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(url).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(lambda: ready(f"http://127.0.0.1:{ingest}/readyz"), 60, "the ingest")
        wait_for(lambda: ready(f"http://127.0.0.1:{flower}/healthcheck"), 60, "Flower")
        shown = log.read_text()
        assert f"ingest    http://127.0.0.1:{ingest}/" in shown
        assert f"endpoint  http://127.0.0.1:{endpoint}/  (prints each email)" in shown
        assert "emailq send --to you@example.com" in shown and "embedded, data in" in shown

        answer = httpx.post(f"http://127.0.0.1:{ingest}/", json=SIGN_IN)
        assert answer.status_code == 202
        message_id = answer.json()["id"]
        wait_for(
            lambda: f"[endpoint] email {message_id}: to=you@example.com type=SignIn" in log.read_text(), 60, "the printing endpoint to show the email"
        )
        wait_for(lambda: f"[worker]   delivered {message_id}" in log.read_text(), 10, "one line for the delivery")
        shown = log.read_text()
        assert f"[ingest]   enqueued {message_id}" in shown
        # Each part's whole log in a file; the terminal keeps one line per email.
        assert "celery@" not in shown and "celery@" in (data_dir / "logs" / "worker.log").read_text()

        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 3  # the worker, the ingest and Flower
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert process.wait(40) == 0, log.read_text()
        assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        # It started the embedded Redis, so it stopped it too.
        assert embedded_redis.running(data_dir) is None
        assert "stopped the embedded Redis" in log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not re.search(r"Traceback", log.read_text())
