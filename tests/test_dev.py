"""`emailq dev`: one command runs the whole pipeline on a fresh machine; Ctrl-C stops it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import psutil

from helpers import running_dev, wait_for

from emailq.store import embedded_redis

SIGN_IN = {"to": "you@example.com", "type": "SignIn", "payload": {"code": "123456"}}


def test_dev_delivers_a_first_email_and_stops_on_ctrl_c(data_dir: Path, tmp_path: Path):
    with running_dev(data_dir, tmp_path) as dev:
        dev.wait_ready()
        shown = dev.shown()
        assert f"ingest    http://127.0.0.1:{dev.ingest}/" in shown
        assert f"endpoint  http://127.0.0.1:{dev.endpoint}/  (prints each email)" in shown
        assert "emailq send --to you@example.com" in shown and "embedded, data in" in shown

        answer = httpx.post(f"http://127.0.0.1:{dev.ingest}/", json=SIGN_IN)
        assert answer.status_code == 202
        message_id = answer.json()["id"]
        wait_for(
            lambda: f"[endpoint] email {message_id}: to=you@example.com type=SignIn" in dev.shown(), 60, "the printing endpoint to show the email"
        )
        wait_for(lambda: f"[worker]   delivered {message_id}" in dev.shown(), 10, "one line for the delivery")
        shown = dev.shown()
        assert f"[ingest]   enqueued {message_id}" in shown
        # Each part's whole log in a file; the terminal keeps one line per email.
        assert "celery@" not in shown and "celery@" in (data_dir / "logs" / "worker.log").read_text()

        children = psutil.Process(dev.process.pid).children(recursive=True)
        assert len(children) >= 3  # the worker, the ingest and Flower
        assert dev.interrupt() == 0, dev.shown()  # what Ctrl-C in a terminal does
        assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        # It started the embedded Redis, so it stopped it too.
        assert embedded_redis.running(data_dir) is None
        assert "stopped the embedded Redis" in dev.shown()
    assert not re.search(r"Traceback", dev.shown())
