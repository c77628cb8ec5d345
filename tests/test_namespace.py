"""emailq installs only under the `emailq` name: a web app's own `worker.py` and
`producer.py` never shadow it, nor does emailq shadow them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from helpers import SIGN_IN, running_dev, wait_for

SHADOWS = {
    "worker.py": "raise SystemExit('the app’s own worker.py was imported')\n",
    "producer.py": "raise SystemExit('the app’s own producer.py was imported')\n",
}


def shadow(directory: Path) -> None:
    for name, text in SHADOWS.items():
        (directory / name).write_text(text)


def test_producer_api_and_worker_run_beside_an_apps_own_worker_and_producer(tmp_path, producer, endpoint, start_worker):
    shadow(tmp_path)
    api = subprocess.run(
        [sys.executable, "-c", "from emailq import send_email, send_many, Producer, InvalidMessage, QueueUnavailable"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert api.returncode == 0, api.stderr

    start_worker()  # runs `emailq worker` in tmp_path, beside the shadows
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "the delivery")


def test_dev_runs_beside_an_apps_own_worker_and_producer(tmp_path, data_dir):
    shadow(tmp_path)
    with running_dev(data_dir, tmp_path) as dev:  # `emailq dev` in tmp_path, beside the shadows
        dev.wait_ready()
        answer = httpx.post(f"http://127.0.0.1:{dev.ingest}/", json=SIGN_IN)
        assert answer.status_code == 202, answer.text
        message_id = answer.json()["id"]
        wait_for(lambda: f"[worker]   delivered {message_id}" in dev.shown(), 60, "the delivery")
        assert dev.interrupt() == 0, dev.shown()
        print(f"Ctrl-C stopped emailq dev (beside the shadows) in {dev.stopped_in:.2f}s")
    assert "the app’s own" not in dev.shown() and "Traceback" not in dev.shown()
    logs = "".join(log.read_text() for log in (data_dir / "logs").glob("*.log"))
    assert "the app’s own" not in logs and "Traceback" not in logs


def test_nothing_installs_top_level_worker_or_producer(tmp_path):
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('worker'), u.find_spec('producer'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout.strip() == "None None", found.stdout + found.stderr
