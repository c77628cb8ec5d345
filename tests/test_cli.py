"""`emailq send` and the command's error handling, run as a user runs it (the console script)."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, run_emailq
from helpers import SIGN_IN

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def settings_env(redis_server, tmp_path) -> dict[str, str]:
    """Only Redis: `emailq send` and these error cases need no endpoint."""
    return {"EMAILQ_REDIS_URL": redis_server.url, "EMAILQ_DATA_DIR": str(tmp_path / "data")}


def envelopes(redis_client, queue: str = "emailq") -> list[dict[str, Any]]:
    """The envelopes on the queue, in the order a worker takes them."""
    out = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        [envelope], _, _ = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["id"] == envelope["id"]
        out.append(envelope)
    return out


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_line_error(result, *words: str) -> str:
    """A user error: non-zero exit, exactly one line on stderr containing `words`, no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    assert len(lines(result.stderr)) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr.strip()


# --- emailq send --------------------------------------------------------------------


def test_send_prints_the_id_and_queues_the_email(settings_env, redis_client, tmp_path):
    result = run_emailq(
        ["send", "--to", "foo@logto.io", "--type", "SignIn", "--payload", '{"code": "123456"}'],
        settings_env,
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    [message_id] = lines(result.stdout)
    assert UUID.match(message_id)
    [envelope] = envelopes(redis_client)
    assert envelope["id"] == message_id
    assert envelope["message"] == SIGN_IN


def test_send_passes_ip_through(settings_env, redis_client, tmp_path):
    result = run_emailq(
        ["send", "--to", "foo@logto.io", "--type", "SignIn", "--ip", "203.0.113.9"],
        settings_env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    [envelope] = envelopes(redis_client)
    assert envelope["message"] == {"to": "foo@logto.io", "type": "SignIn", "payload": {}, "ip": "203.0.113.9"}


def test_send_file_queues_every_line_and_prints_every_id(settings_env, redis_client, tmp_path):
    emails = [{"to": f"user{n}@example.com", "type": "Register", "payload": {"code": f"00000{n}"}} for n in range(3)]
    path = tmp_path / "emails.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in emails))

    result = run_emailq(["send", "--file", str(path)], settings_env, tmp_path)

    assert result.returncode == 0, result.stderr
    ids = lines(result.stdout)
    assert len(ids) == 3 and all(UUID.match(i) for i in ids)
    queued = envelopes(redis_client)
    assert [e["id"] for e in queued] == ids
    assert [e["message"] for e in queued] == emails
    assert "Traceback" not in result.stderr


def test_send_file_skips_blank_lines(settings_env, redis_client, tmp_path):
    path = tmp_path / "emails.jsonl"
    path.write_text(json.dumps(SIGN_IN) + "\n\n   \n" + json.dumps(SIGN_IN) + "\n")
    result = run_emailq(["send", "--file", str(path)], settings_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == 2
    assert redis_client.llen("emailq") == 2


def test_send_file_from_stdin(settings_env, redis_client, tmp_path):
    text = "".join(json.dumps(SIGN_IN) + "\n" for _ in range(2))
    result = run_emailq(["send", "--file", "-"], settings_env, tmp_path, input=text)
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == 2
    assert redis_client.llen("emailq") == 2


def test_send_file_reports_every_bad_line_by_number_and_queues_nothing(settings_env, redis_client, tmp_path):
    good = json.dumps(SIGN_IN).encode()
    path = tmp_path / "emails.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                good,  # 1
                b'{"to": "foo@logto.io", "type": ',  # 2: not JSON
                good,  # 3
                json.dumps({**SIGN_IN, "to": "no-at-sign"}).encode(),  # 4: bad address
                good,  # 5
                b'{"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "\xff\xfe"}}',  # 6: not UTF-8
                good,  # 7
            ]
        )
        + b"\n"
    )

    result = run_emailq(["send", "--file", str(path)], settings_env, tmp_path)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == ""
    assert redis_client.llen("emailq") == 0
    reported = lines(result.stderr)
    by_line = {int(m.group(1)): line for line in reported if (m := re.search(r"\bline (\d+)\b", line))}
    assert sorted(by_line) == [2, 4, 6], result.stderr
    assert "JSON" in by_line[2]
    assert "to" in by_line[4]
    assert "UTF-8" in by_line[6]
    # Nothing else on stderr but the three reports and one summary line.
    others = [line for line in reported if line not in by_line.values()]
    assert len(others) == 1, result.stderr
    assert "nothing was enqueued" in others[0]


def test_send_file_that_does_not_exist_is_one_line(settings_env, redis_client, tmp_path):
    result = run_emailq(["send", "--file", str(tmp_path / "missing.jsonl")], settings_env, tmp_path)
    assert_one_line_error(result, "--file")


# --- one line, never a traceback ----------------------------------------------------


def test_bad_payload_json_is_one_line(settings_env, redis_client, tmp_path):
    result = run_emailq(
        ["send", "--to", "foo@logto.io", "--type", "SignIn", "--payload", "{code: 1"],
        settings_env,
        tmp_path,
    )
    assert_one_line_error(result, "--payload")
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--to", "not-an-address", "--type", "SignIn"], ["to"]),
        (["--to", "foo@logto.io", "--type", "Nope"], ["type"]),
        (["--to", "foo@logto.io", "--type", "SignIn", "--payload", "[1, 2]"], ["payload"]),
        (["--to", "foo@logto.io", "--type", "SignIn", "--payload", '{"code": 123}'], ["code"]),
        (["--type", "SignIn"], ["--to"]),
    ],
)
def test_invalid_email_from_flags_is_one_line(settings_env, redis_client, tmp_path, args, words):
    result = run_emailq(["send", *args], settings_env, tmp_path)
    assert_one_line_error(result, *words)
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize(
    "name, value",
    [("EMAILQ_MAX_ATTEMPTS", "abc"), ("EMAILQ_REDIS_URL", "http://x")],
)
@pytest.mark.parametrize(
    "command",
    [
        ["send", "--to", "foo@logto.io", "--type", "SignIn"],
        ["status"],
        ["dlq", "list"],
        ["worker"],
    ],
    ids=["send", "status", "dlq-list", "worker"],
)
def test_bad_setting_is_one_line_naming_it(settings_env, redis_client, tmp_path, name, value, command):
    env = {**settings_env, "EMAILQ_ENDPOINT_URL": "http://127.0.0.1:9/send", name: value}
    result = run_emailq(command, env, tmp_path)
    assert_one_line_error(result, name)
    assert redis_client.llen("emailq") == 0


def test_worker_without_endpoint_url_is_one_line_naming_it(settings_env, tmp_path):
    result = run_emailq(["worker"], settings_env, tmp_path)
    assert_one_line_error(result, "EMAILQ_ENDPOINT_URL")


def test_unknown_command_is_one_line(settings_env, tmp_path):
    result = run_emailq(["frobnicate"], settings_env, tmp_path)
    assert_one_line_error(result, "frobnicate")


def test_unknown_option_is_one_line(settings_env, tmp_path):
    result = run_emailq(["send", "--bogus"], settings_env, tmp_path)
    assert_one_line_error(result, "--bogus")


@pytest.mark.parametrize(
    "command",
    [
        ["send", "--to", "foo@logto.io", "--type", "SignIn"],
        ["status"],
        ["dlq", "list"],
        ["dlq", "replay", "--all"],
    ],
    ids=["send", "status", "dlq-list", "dlq-replay"],
)
def test_redis_unreachable_is_one_line(settings_env, tmp_path, command):
    env = {**settings_env, "EMAILQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_emailq(command, env, tmp_path)
    assert_one_line_error(result, "Redis")


def test_send_to_a_silent_redis_fails_within_the_timeout(settings_env, tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {
            **settings_env,
            "EMAILQ_REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            "EMAILQ_REDIS_TIMEOUT": "0.3",
        }
        result = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert_one_line_error(result, "Redis")


def test_help_and_version_work(settings_env, tmp_path: Path):
    result = run_emailq(["--help"], settings_env, tmp_path)
    assert result.returncode == 0
    for command in ("worker", "send", "dlq", "status"):
        assert command in result.stdout
    version = run_emailq(["--version"], settings_env, tmp_path)
    assert version.returncode == 0 and "0." in version.stdout
