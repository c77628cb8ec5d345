"""`emailq dev`: one command runs the whole pipeline on a fresh machine; Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import RedisServer, run_emailq
from helpers import EMAILQ, free_port, running_dev, wait_for, wait_gone

from emailq.store import embedded_redis
from emailq.worker.commands.dev_parts import port_in_use

SIGN_IN = {"to": "you@example.com", "type": "SignIn", "payload": {"code": "123456"}}


# How long Ctrl-C or SIGTERM may take to stop everything: 5 s for the parts' SIGTERM, 2 s
# after SIGKILL, up to 5 s for the embedded Redis's shutdown (`dev_parts`,
# `embedded_redis`), on a loaded machine; it takes one to three on an idle one.
STOPS_WITHIN = 15
# A killed `emailq dev`'s parts get SIGTERM at once and SIGKILL 5 s later (`lifeline`);
# its Redis goes once they are gone.
ORPHANS_GONE_WITHIN = 20


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
        # The ingest logs the enqueue once it is done, and a loaded machine may run the
        # worker's delivery first: two runs of ten beside two CPU burners showed them so.
        wait_for(lambda: f"[ingest]   enqueued {message_id}" in dev.shown(), 10, "one line for the enqueue")
        shown = dev.shown()
        # Each part's whole log in a file; the terminal keeps one line per email.
        assert "celery@" not in shown and "celery@" in (data_dir / "logs" / "worker.log").read_text()

        children = psutil.Process(dev.process.pid).children(recursive=True)
        assert len(children) >= 3  # the worker, the ingest and Flower
        assert dev.interrupt() == 0, dev.shown()  # what Ctrl-C in a terminal does
        print(f"Ctrl-C stopped emailq dev in {dev.stopped_in:.2f}s")
        assert dev.stopped_in is not None and dev.stopped_in < STOPS_WITHIN, dev.shown()
        assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        # It started the embedded Redis, so it stopped it too.
        assert embedded_redis.running(data_dir) is None
        assert "stopped the embedded Redis" in dev.shown()
    assert not re.search(r"Traceback", dev.shown())


def test_dev_stops_on_ctrl_c_even_when_started_with_sigint_ignored(data_dir: Path, tmp_path: Path):
    # As a CI runner or a script's `emailq dev &` starts it: Python then leaves SIGINT
    # ignored unless the command takes it back, and Ctrl-C did nothing for 40 s.
    with running_dev(data_dir, tmp_path, sigint=signal.SIG_IGN) as dev:
        dev.wait_ready()
        parts = dev.parts()
        assert dev.interrupt() == 0, dev.shown()
        print(f"Ctrl-C (started with SIGINT ignored) stopped emailq dev in {dev.stopped_in:.2f}s")
        assert dev.stopped_in is not None and dev.stopped_in < STOPS_WITHIN, dev.shown()
        wait_gone(parts, 5, "every part of emailq dev to be gone")
        assert embedded_redis.running(data_dir) is None


def test_dev_sigterm_leaves_no_part_running(data_dir: Path, tmp_path: Path):
    with running_dev(data_dir, tmp_path) as dev:
        dev.wait_ready()
        parts = dev.parts()
        assert len(parts) >= 4  # the worker, the ingest, Flower, the embedded Redis
        assert dev.terminate() == 0, dev.shown()  # as `kill` or `timeout` sends it
        print(f"SIGTERM stopped emailq dev in {dev.stopped_in:.2f}s")
        assert dev.stopped_in is not None and dev.stopped_in < STOPS_WITHIN, dev.shown()
        wait_gone(parts, 5, "every part of emailq dev to be gone")
        assert embedded_redis.running(data_dir) is None
        assert "stopped the embedded Redis" in dev.shown()
    assert "Traceback" not in dev.shown()


def test_dev_killed_with_sigkill_leaves_no_part_running(data_dir: Path, tmp_path: Path):
    with running_dev(data_dir, tmp_path) as dev:
        dev.wait_ready()
        parts = dev.parts()
        assert len(parts) >= 4  # the worker, the ingest, Flower, the embedded Redis
        dev.process.kill()  # `kill -9` of emailq dev alone: no cleanup of its own runs
        dev.process.wait()
        took = wait_gone(parts, ORPHANS_GONE_WITHIN, "every part of a killed emailq dev to be gone")
        print(f"kill -9: every part of emailq dev gone {took:.2f}s later")
        assert embedded_redis.running(data_dir) is None
        # So the next `emailq dev` finds its ports free.
        assert not [port for port in (dev.ingest, dev.flower, dev.endpoint) if port_in_use("127.0.0.1", port)]


def test_dev_killed_keeps_an_embedded_redis_it_did_not_start(data_dir: Path, tmp_path: Path):
    url = embedded_redis.ensure_running(data_dir)  # as an earlier `emailq` command leaves it
    redis_pid = int((data_dir / "redis.pid").read_text())
    with running_dev(data_dir, tmp_path) as dev:
        dev.wait_ready()
        parts = [part for part in dev.parts() if part.pid != redis_pid]
        assert len(parts) == 3  # the worker, the ingest, Flower: no guard for a Redis it found
        dev.process.kill()
        dev.process.wait()
        wait_gone(parts, ORPHANS_GONE_WITHIN, "every part of a killed emailq dev to be gone")
    # Shared by every command: the other commands using it still find it.
    assert embedded_redis.running(data_dir) == url


@pytest.mark.parametrize(
    ("option", "part"), [("--ingest-port", "the ingest"), ("--flower-port", "Flower"), ("--endpoint-port", "the printing endpoint")]
)
def test_dev_port_in_use_is_one_line(data_dir: Path, tmp_path: Path, option: str, part: str):
    ports = {"--ingest-port": free_port(), "--flower-port": free_port(), "--endpoint-port": free_port()}
    with socket.socket() as taken:  # another program listening there, as another emailq dev would
        taken.bind(("127.0.0.1", ports[option]))
        taken.listen()
        args = ["dev", *(item for pair in ports.items() for item in (pair[0], str(pair[1])))]
        result = run_emailq(args, {"EMAILQ_DATA_DIR": str(data_dir)}, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (f"emailq dev: port {ports[option]} ({part}) is in use (another emailq dev?): stop it or pass {option} PORT") + (
        ", or set EMAILQ_ENDPOINT_URL" if option == "--endpoint-port" else ""
    )
    # Checked before anything started.
    assert embedded_redis.running(data_dir) is None and not (data_dir / "logs").exists()


def test_flower_exits_on_sigterm_while_redis_is_down(tmp_path: Path):
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    log = tmp_path / "flower.log"
    flower = subprocess.Popen(
        [EMAILQ, "flower", "--port", str(free_port())],
        env={**os.environ, "EMAILQ_REDIS_URL": redis_server.url, "EMAILQ_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: b"Connected to redis://" in log.read_bytes() or flower.poll() is not None, 30, "Flower to reach Redis", interval=0.1)
        assert flower.poll() is None, log.read_text()
        # Flower asks the workers to send events every 5 s, from a thread of asyncio's
        # executor, which the interpreter joins before it exits. Once one such call has
        # gone through, the next ones, with Redis down, reconnect for ever (Celery 5.7,
        # kombu 5.7, Flower 2.2): that is the thread a SIGTERM used to wait on. So Redis
        # stops after a first call, and SIGTERM comes after the next two.
        time.sleep(6)
        redis_server.stop()
        time.sleep(11)
        assert "Failed to capture events" in log.read_text()
        sent = time.monotonic()
        flower.terminate()
        flower.wait(15)  # 3 s to stop by itself (`flower_shutdown`), on a loaded machine
        print(f"Flower stopped {time.monotonic() - sent:.2f}s after SIGTERM with Redis down")
    finally:
        if flower.poll() is None:
            flower.kill()
            flower.wait()
        redis_server.stop()
    assert "Traceback" not in log.read_text()
