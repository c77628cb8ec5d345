"""emailq on a Redis database that another Celery app uses too: each sees only its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import run_emailq, wait_for
from helpers import SIGN_IN, assert_one_home

PLAIN_APP = """
from celery import Celery

app = Celery("plain", broker={url!r})
app.conf.task_acks_late = True


@app.task(name="plain.record")
def record(word):
    with open({out!r}, "a") as out:
        out.write(word + "\\n")
"""


def test_a_plain_celery_app_on_the_same_database_is_unharmed(producer, endpoint, start_worker, redis_server, settings_env, redis_client, tmp_path):
    out = tmp_path / "plain.out"
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    (plain_dir / "plain.py").write_text(PLAIN_APP.format(url=redis_server.url, out=str(out)))
    plain = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "plain", "worker", "--pool=solo", "-n", "plain@%h"],
        cwd=plain_dir,
        env={**os.environ, "PYTHONPATH": str(plain_dir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        start_worker()
        ids = producer.send_many([SIGN_IN] * 20)
        sent = subprocess.run(
            [sys.executable, "-c", "import plain; [plain.record.delay(w) for w in ('one', 'two', 'three')]"],
            cwd=plain_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr

        wait_for(lambda: set(ids) <= set(endpoint.delivered_keys()), 30, "emailq's emails delivered")
        wait_for(lambda: out.exists() and len(out.read_text().split()) == 3, 30, "the plain app's tasks run")
        assert sorted(out.read_text().split()) == ["one", "three", "two"]  # each once

        status = run_emailq(["status", "--json"], settings_env, tmp_path)
        report = json.loads(status.stdout)
        assert len(report["workers"]) == 1 and not report["workers"][0].startswith("plain@"), report
        assert not redis_client.exists("celery") or redis_client.llen("celery") == 0
        assert_one_home(redis_client)
    finally:
        plain.terminate()
        plain.wait(20)
