"""emailq installs only under the `emailq` name: a web app's own `worker.py` and
`producer.py` never shadow it, nor does emailq shadow them."""

from __future__ import annotations

import subprocess
import sys

from conftest import wait_for

SHADOWS = {
    "worker.py": "raise SystemExit('the app’s own worker.py was imported')\n",
    "producer.py": "raise SystemExit('the app’s own producer.py was imported')\n",
}


def test_producer_api_and_worker_run_beside_an_apps_own_worker_and_producer(tmp_path, producer, endpoint, start_worker):
    for name, text in SHADOWS.items():
        (tmp_path / name).write_text(text)
    api = subprocess.run(
        [sys.executable, "-c", "from emailq import send_email, send_many, Producer, InvalidMessage, QueueUnavailable"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert api.returncode == 0, api.stderr

    start_worker()  # runs `emailq worker` in tmp_path, beside the shadows
    message_id = producer.send({"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}})
    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "the delivery")


def test_nothing_installs_top_level_worker_or_producer(tmp_path):
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('worker'), u.find_spec('producer'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout.strip() == "None None", found.stdout + found.stderr
