"""Settings: `EMAILQ_*` from the environment and a `.env` file; a bad one stops a command
at start with one line naming it."""

from __future__ import annotations

import base64
import json
import math

import pytest

from conftest import run_emailq, settings_from
from emailq.errors import ConfigError
from emailq.settings import get_settings

SEND = ["send", "--to", "foo@logto.io", "--type", "SignIn", "--payload", '{"code": "123456"}']


@pytest.fixture
def settings_env(redis_server, tmp_path) -> dict[str, str]:
    """Only Redis: these commands need no endpoint."""
    return {"EMAILQ_REDIS_URL": redis_server.url, "EMAILQ_DATA_DIR": str(tmp_path / "data")}


def assert_refused_naming(result, name: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    stderr = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(stderr) == 1, result.stderr
    assert name in stderr[0]


# --- .env ---------------------------------------------------------------------------


def test_dotenv_in_the_working_directory_is_read(settings_env, redis_client, tmp_path):
    (tmp_path / ".env").write_text("# emailq\nEMAILQ_QUEUE=from-dotenv\n")

    result = run_emailq(SEND, settings_env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert redis_client.llen("from-dotenv") == 1
    assert redis_client.llen("emailq") == 0


def test_environment_wins_over_dotenv(settings_env, redis_client, tmp_path):
    (tmp_path / ".env").write_text("EMAILQ_QUEUE=from-dotenv\nEMAILQ_ALLOW_ANY_TYPE=true\n")

    result = run_emailq(
        ["send", "--to", "foo@logto.io", "--type", "Newsletter"],
        {**settings_env, "EMAILQ_QUEUE": "from-env"},
        tmp_path,
    )

    assert result.returncode == 0, result.stderr  # ALLOW_ANY_TYPE still came from .env
    assert redis_client.llen("from-env") == 1
    assert redis_client.llen("from-dotenv") == 0


def test_dotenv_in_another_directory_is_not_read(settings_env, redis_client, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".env").write_text("EMAILQ_QUEUE=from-parent-dotenv\n")

    result = run_emailq(SEND, settings_env, elsewhere)

    assert result.returncode == 0, result.stderr
    assert redis_client.llen("emailq") == 1
    assert redis_client.llen("from-parent-dotenv") == 0


def test_bad_value_in_dotenv_is_one_line_naming_the_setting(settings_env, redis_client, tmp_path):
    (tmp_path / ".env").write_text("EMAILQ_MAX_ATTEMPTS=lots\n")

    result = run_emailq(SEND, settings_env, tmp_path)

    assert_refused_naming(result, "EMAILQ_MAX_ATTEMPTS")
    assert redis_client.llen("emailq") == 0


def test_a_good_environment_value_fixes_a_bad_dotenv_value(settings_env, redis_client, tmp_path):
    (tmp_path / ".env").write_text("EMAILQ_MAX_ATTEMPTS=lots\n")
    result = run_emailq(SEND, {**settings_env, "EMAILQ_MAX_ATTEMPTS": "4"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert redis_client.llen("emailq") == 1


# --- invalid values -----------------------------------------------------------------

INVALID = [
    ("EMAILQ_REDIS_URL", "http://x"),
    ("EMAILQ_REDIS_URL", "not a url"),
    ("EMAILQ_QUEUE", "has space"),
    ("EMAILQ_QUEUE", ""),
    ("EMAILQ_REDIS_TIMEOUT", "0"),
    ("EMAILQ_REDIS_TIMEOUT", "fast"),
    ("EMAILQ_ALLOW_ANY_TYPE", "perhaps"),
    ("EMAILQ_MAX_MESSAGE_BYTES", "10"),
    ("EMAILQ_MESSAGE_TTL_SECONDS", "0"),
    ("EMAILQ_MESSAGE_TTL_SECONDS", "-5"),
    ("EMAILQ_ENDPOINT_URL", "not-a-url"),
    ("EMAILQ_ENDPOINT_URL", "ftp://mail.example.com/"),
    ("EMAILQ_CONNECT_TIMEOUT", "0"),
    ("EMAILQ_REQUEST_TIMEOUT", "-1"),
    ("EMAILQ_MAX_ATTEMPTS", "abc"),
    ("EMAILQ_MAX_ATTEMPTS", "0"),
    ("EMAILQ_MAX_ATTEMPTS", "2.5"),
    ("EMAILQ_RETRY_BASE_SECONDS", "-1"),
    ("EMAILQ_RETRY_MAX_SECONDS", "soon"),
    ("EMAILQ_CONCURRENCY", "0"),
    ("EMAILQ_VISIBILITY_TIMEOUT", "abc"),
    ("EMAILQ_LOG_FORMAT", "xml"),
    ("EMAILQ_METRICS_PORT", "70000"),
    ("EMAILQ_FLOWER_BASIC_AUTH", "no-colon-secret"),
]


@pytest.mark.parametrize("name, value", INVALID)
def test_invalid_value_is_refused_naming_the_setting(monkeypatch, tmp_path, name, value):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(raised.value)
    assert name in message
    assert "\n" not in message


def test_a_secret_setting_is_not_echoed_when_invalid(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMAILQ_FLOWER_BASIC_AUTH", "hunter2-no-colon")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "name, value",
    [("EMAILQ_MAX_ATTEMPTS", "0"), ("EMAILQ_QUEUE", "has space"), ("EMAILQ_LOG_FORMAT", "xml")],
)
def test_invalid_value_stops_the_command_with_one_line(settings_env, redis_client, tmp_path, name, value):
    result = run_emailq(SEND, {**settings_env, name: value}, tmp_path)
    assert_refused_naming(result, name)
    assert redis_client.llen("emailq") == 0


# --- the visibility timeout ---------------------------------------------------------


def test_visibility_timeout_shorter_than_the_longest_delivery_is_refused(
    settings_env, redis_client, tmp_path
):
    # A worker holds an email for one attempt at most, 2 x EMAILQ_REQUEST_TIMEOUT (20 s) with room.
    env = {**settings_env, "EMAILQ_VISIBILITY_TIMEOUT": "10", "EMAILQ_ENDPOINT_URL": "http://127.0.0.1:9/"}
    for command in (SEND, ["worker"], ["status"]):
        assert_refused_naming(run_emailq(command, env, tmp_path), "EMAILQ_VISIBILITY_TIMEOUT")
    assert redis_client.llen("emailq") == 0


def test_visibility_timeout_must_exceed_the_longest_delivery_exactly(settings_env, redis_client, tmp_path):
    short = {
        **settings_env,
        "EMAILQ_MAX_ATTEMPTS": "2",
        "EMAILQ_CONNECT_TIMEOUT": "1",
        "EMAILQ_REQUEST_TIMEOUT": "1",
        "EMAILQ_RETRY_MAX_SECONDS": "1",
        "EMAILQ_MESSAGE_TTL_SECONDS": "5",
    }
    longest = settings_from({**short, "EMAILQ_VISIBILITY_TIMEOUT": "100000"}).longest_delivery_seconds()
    assert longest < 60

    at_most = run_emailq(SEND, {**short, "EMAILQ_VISIBILITY_TIMEOUT": str(math.floor(longest))}, tmp_path)
    assert_refused_naming(at_most, "EMAILQ_VISIBILITY_TIMEOUT")
    assert redis_client.llen("emailq") == 0

    above = run_emailq(SEND, {**short, "EMAILQ_VISIBILITY_TIMEOUT": str(math.floor(longest) + 1)}, tmp_path)
    assert above.returncode == 0, above.stderr
    assert redis_client.llen("emailq") == 1


def test_settings_reach_the_message(settings_env, redis_client, tmp_path):
    result = run_emailq(SEND, {**settings_env, "EMAILQ_MESSAGE_TTL_SECONDS": "42"}, tmp_path)
    assert result.returncode == 0, result.stderr
    message = json.loads(redis_client.lindex("emailq", 0))
    [envelope], _, _ = json.loads(base64.b64decode(message["body"]))
    assert envelope["expires_at"] - envelope["created_at"] == pytest.approx(42)
