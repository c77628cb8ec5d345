"""Settings: `EMAILQ_*` from the environment and a `.env` file; a bad one stops a command
at start with one line naming it."""

from __future__ import annotations

import base64
import json
import math

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

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
    # Sentinel: every part sentinel://host:port, credentials on the first part only.
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1"),
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1:26379;sentinel-2:26379"),
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1:26379;redis://sentinel-2:26379"),
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1:26379;sentinel://sentinel-2:port"),
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1:26379/zero"),
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1:26379;sentinel://:pw@sentinel-2:26379"),
    ("EMAILQ_REDIS_URL", "sentinel://sentinel-1:26379?db=2"),
    ("EMAILQ_REDIS_SENTINEL_MASTER", "emailq"),  # without a sentinel:// URL
    ("EMAILQ_REDIS_SENTINEL_PASSWORD", "pw"),
    ("EMAILQ_REDIS_MIN_REPLICAS", "-1"),
    ("EMAILQ_REDIS_MIN_REPLICAS", "one"),
    ("EMAILQ_QUEUE", "has space"),
    ("EMAILQ_QUEUE", ""),
    ("EMAILQ_REDIS_KEY_PREFIX", "tenant a:"),
    ("EMAILQ_REDIS_KEY_PREFIX", "tenant-*:"),
    ("EMAILQ_REDIS_KEY_PREFIX", "x" * 65),
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
    ("EMAILQ_FLOWER_BASIC_AUTH", "ops:pw1,alice"),
    ("EMAILQ_FLOWER_BASIC_AUTH", "ops:pw1,"),
    ("EMAILQ_FLOWER_BASIC_AUTH", ":pw1"),
    ("EMAILQ_FLOWER_BASIC_AUTH", "ops:"),
    # Secrets that cannot work: refused at start, not on every delivery.
    ("EMAILQ_ENDPOINT_AUTHORIZATION", ""),
    ("EMAILQ_ENDPOINT_AUTHORIZATION", "   "),
    ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer caf\u00e9"),
    ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer abc\r\nX-Injected: 1"),
    ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer abc\n"),
    ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer \x1babc"),
    ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer abc\x7f"),
    ("EMAILQ_SIGNING_SECRET", "whsec_"),
    ("EMAILQ_SIGNING_SECRET", "whsec_c2VjcmV0 whsec_"),
    ("EMAILQ_SIGNING_SECRET", "whsec_not base64!"),
    ("EMAILQ_SIGNING_SECRET", ""),
    ("EMAILQ_SIGNING_SECRET", "  "),
    ("EMAILQ_INGEST_AUTHORIZATION", ""),
    ("EMAILQ_INGEST_AUTHORIZATION", "  \t "),
    ("EMAILQ_INGEST_AUTHORIZATION", "Bearer caf\u00e9"),
    ("EMAILQ_INGEST_AUTHORIZATION", "Bearer abc "),
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
    [
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer s3cr\u00e9t-token"),
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer s3cret-token\r\nX-Injected: 1"),
        ("EMAILQ_INGEST_AUTHORIZATION", "Bearer s3cr\u00e9t-token"),
        ("EMAILQ_SIGNING_SECRET", "s3cret-token whsec_"),
    ],
)
def test_a_refused_secret_is_not_echoed(monkeypatch, tmp_path, name, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert name in str(raised.value)
    assert "s3cr" not in str(raised.value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer abc.DEF-123_~+/="),
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "Basic dXNlcjpwYXNz"),
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "Token\tabc"),
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "x"),
        ("EMAILQ_SIGNING_SECRET", "whsec_" + base64.b64encode(b"key").decode()),
        ("EMAILQ_SIGNING_SECRET", "plain-secret whsec_" + base64.b64encode(b"key").decode()),
        ("EMAILQ_INGEST_AUTHORIZATION", "Bearer ingest-token-123"),
    ],
)
def test_usable_secrets_are_accepted(monkeypatch, tmp_path, name, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        setting = getattr(get_settings(), name.removeprefix("EMAILQ_").lower())
    finally:
        get_settings.cache_clear()
    assert setting.get_secret_value() == value


def test_unset_ingest_authorization_stays_allowed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMAILQ_INGEST_AUTHORIZATION", raising=False)
    assert settings_from({}).ingest_authorization is None


@pytest.mark.parametrize(
    "url, password",
    [
        ("redis://:hunter2-pw@127.0.0.1:6379/0", "hunter2-pw"),
        ("rediss://emailq:hunter2-pw@redis.example:6380/1", "hunter2-pw"),
        ("redis://hunter2-pw@127.0.0.1:6379/0", "hunter2-pw"),
        ("redis://127.0.0.1:6379/0?password=hunter2-pw&db=2", "hunter2-pw"),
    ],
)
def test_repr_and_str_of_settings_never_show_the_redis_password(url, password):
    settings = settings_from({"EMAILQ_REDIS_URL": url})
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert password not in shown
        assert "redis_url=" in shown and "***" in shown
    assert str(settings.redis_url) == url  # what connects keeps the password


def test_a_sentinel_url_needs_the_service_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMAILQ_REDIS_URL", "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert str(raised.value).startswith("EMAILQ_REDIS_SENTINEL_MASTER: required with a sentinel:// EMAILQ_REDIS_URL")


def test_a_sentinel_url_names_every_sentinel_and_the_primarys_password():
    url = "sentinel://:hunter2-pw@10.0.0.1:26379/2;sentinel://sentinel-b:26380; sentinel://[::1]:26381"
    settings = settings_from(
        {"EMAILQ_REDIS_URL": url, "EMAILQ_REDIS_SENTINEL_MASTER": "emailq", "EMAILQ_REDIS_SENTINEL_PASSWORD": "hunter2-sentinel"}
    )
    assert settings.redis_url.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert (settings.redis_url.password, settings.redis_url.db) == ("hunter2-pw", 2)
    assert str(settings.redis_url) == url  # what connects keeps the password
    for shown in (repr(settings), str(settings), repr(settings.redis_url)):
        assert "hunter2" not in shown
    assert "sentinel://:***@10.0.0.1:26379/2;sentinel://sentinel-b:26380" in repr(settings)


def test_a_bad_sentinel_url_stops_the_command_with_one_line(settings_env, tmp_path):
    env = {**settings_env, "EMAILQ_REDIS_URL": "sentinel://:hunter2@a:26379;sentinel://b", "EMAILQ_REDIS_SENTINEL_MASTER": "m"}
    result = run_emailq(SEND, env, tmp_path)
    assert_refused_naming(result, "EMAILQ_REDIS_URL")
    assert "part 2 of 2 must be sentinel://host:port" in result.stderr and "hunter2" not in result.stderr


def test_the_masked_redis_url_still_says_where_redis_is():
    settings = settings_from({"EMAILQ_REDIS_URL": "rediss://emailq:pw@redis.example:6380/1"})
    assert "redis_url='rediss://emailq:***@redis.example:6380/1'" in repr(settings)


@pytest.mark.parametrize(
    "name, value",
    [
        ("EMAILQ_MAX_ATTEMPTS", "0"),
        ("EMAILQ_QUEUE", "has space"),
        ("EMAILQ_LOG_FORMAT", "xml"),
        ("EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer caf\u00e9"),
        ("EMAILQ_SIGNING_SECRET", "whsec_"),
        ("EMAILQ_INGEST_AUTHORIZATION", ""),
    ],
)
def test_invalid_value_stops_the_command_with_one_line(settings_env, redis_client, tmp_path, name, value):
    result = run_emailq(SEND, {**settings_env, name: value}, tmp_path)
    assert_refused_naming(result, name)
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize(
    "command, name, value",
    [
        (["worker"], "EMAILQ_ENDPOINT_AUTHORIZATION", "Bearer caf\u00e9-token"),
        (["worker"], "EMAILQ_SIGNING_SECRET", "whsec_"),
        (["serve", "--port", "0"], "EMAILQ_INGEST_AUTHORIZATION", ""),
    ],
)
def test_a_secret_that_cannot_work_stops_the_command_at_start(settings_env, tmp_path, command, name, value):
    env = {**settings_env, "EMAILQ_ENDPOINT_URL": "http://127.0.0.1:9/", name: value}
    result = run_emailq(command, env, tmp_path)
    assert_refused_naming(result, name)
    assert "caf" not in result.stderr


# --- the visibility timeout ---------------------------------------------------------


def test_visibility_timeout_shorter_than_the_longest_delivery_is_refused(settings_env, redis_client, tmp_path):
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


# --- TLS to Redis and the Sentinels -----------------------------------------------------

SENTINEL = {"EMAILQ_REDIS_URL": "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379", "EMAILQ_REDIS_SENTINEL_MASTER": "emailq"}


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> dict[str, str]:
    """A CA, a client certificate and its key, and files that are not what they claim."""
    directory = tmp_path_factory.mktemp("pem")
    authority = trustme.CA()
    leaf = authority.issue_cert("emailq.test")
    other = authority.issue_cert("other.test")
    files = {
        "ca": authority.cert_pem,
        "cert": leaf.cert_chain_pems[0],
        "key": leaf.private_key_pem,
        "other_key": other.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        blob.write_to_path(directory / name)
        paths[name] = str(directory / name)
    (directory / "junk").write_text("not a certificate\n")
    paths["junk"] = str(directory / "junk")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"passphrase"))
    (directory / "encrypted").write_bytes(encrypted)
    paths["encrypted"] = str(directory / "encrypted")
    paths["missing"] = str(directory / "missing.pem")
    return paths


TLS_REFUSED = [
    # (name the error must start with, the settings, what the one line says)
    ("EMAILQ_REDIS_TLS", {"EMAILQ_REDIS_URL": "redis://r:6379/0", "EMAILQ_REDIS_TLS": "true"}, "write rediss://"),
    ("EMAILQ_REDIS_TLS", {**SENTINEL, "EMAILQ_REDIS_TLS": "perhaps"}, "boolean"),
    ("EMAILQ_REDIS_SENTINEL_TLS", {"EMAILQ_REDIS_URL": "rediss://r:6379/0", "EMAILQ_REDIS_SENTINEL_TLS": "true"}, "not a sentinel://"),
    ("EMAILQ_REDIS_TLS_CA_FILE", {"EMAILQ_REDIS_URL": "redis://r:6379/0", "EMAILQ_REDIS_TLS_CA_FILE": "{ca}"}, "no Redis connection uses TLS"),
    ("EMAILQ_REDIS_TLS_CA_FILE", {**SENTINEL, "EMAILQ_REDIS_TLS_CA_FILE": "{ca}"}, "no Redis connection uses TLS"),
    ("EMAILQ_REDIS_TLS_CHECK_HOSTNAME", {**SENTINEL, "EMAILQ_REDIS_TLS_CHECK_HOSTNAME": "false"}, "no Redis connection uses TLS"),
    ("EMAILQ_REDIS_TLS_CA_FILE", {"EMAILQ_REDIS_URL": "rediss://r:6379/0", "EMAILQ_REDIS_TLS_CA_FILE": "{missing}"}, "no such file"),
    ("EMAILQ_REDIS_TLS_CA_FILE", {**SENTINEL, "EMAILQ_REDIS_TLS": "true", "EMAILQ_REDIS_TLS_CA_FILE": "{junk}"}, "not a PEM CA bundle"),
    ("EMAILQ_REDIS_TLS_KEY_FILE", {"EMAILQ_REDIS_URL": "rediss://r:6379/0", "EMAILQ_REDIS_TLS_KEY_FILE": "{key}"}, "without"),
    (
        "EMAILQ_REDIS_TLS_CERT_FILE",
        {"EMAILQ_REDIS_URL": "rediss://r:6379/0", "EMAILQ_REDIS_TLS_CERT_FILE": "{cert}", "EMAILQ_REDIS_TLS_KEY_FILE": "{other_key}"},
        "not a PEM certificate and its key",
    ),
    ("EMAILQ_REDIS_TLS_CERT_FILE", {"EMAILQ_REDIS_URL": "rediss://r:6379/0", "EMAILQ_REDIS_TLS_CERT_FILE": "{cert}"}, "must hold the key too"),
    (
        "EMAILQ_REDIS_TLS_KEY_FILE",
        {**SENTINEL, "EMAILQ_REDIS_SENTINEL_TLS": "true", "EMAILQ_REDIS_TLS_CERT_FILE": "{cert}", "EMAILQ_REDIS_TLS_KEY_FILE": "{encrypted}"},
        "encrypted",
    ),
]


@pytest.mark.parametrize("name, env, says", TLS_REFUSED)
def test_a_bad_tls_setting_is_refused_in_one_line_naming_it(monkeypatch, tmp_path, pem, name, env, says):
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**pem))
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(raised.value)
    assert message.startswith(name + ":") and says in message and "\n" not in message


@pytest.mark.parametrize(
    "env, servers, sentinels",
    [
        ({"EMAILQ_REDIS_URL": "redis://r:6379/0"}, False, False),
        ({"EMAILQ_REDIS_URL": "rediss://r:6379/0"}, True, False),
        (SENTINEL, False, False),
        ({**SENTINEL, "EMAILQ_REDIS_TLS": "true"}, True, True),  # the Sentinels follow by default
        ({**SENTINEL, "EMAILQ_REDIS_TLS": "true", "EMAILQ_REDIS_SENTINEL_TLS": "false"}, True, False),
        ({**SENTINEL, "EMAILQ_REDIS_SENTINEL_TLS": "true"}, False, True),
    ],
)
def test_tls_goes_where_the_settings_say(env, servers, sentinels):
    settings = settings_from(env)
    assert (settings.redis_server_tls(), settings.sentinel_tls()) == (servers, sentinels)


def test_good_tls_files_are_accepted(pem):
    env = {**SENTINEL, "EMAILQ_REDIS_TLS": "true", "EMAILQ_REDIS_TLS_CA_FILE": pem["ca"]}
    settings = settings_from({**env, "EMAILQ_REDIS_TLS_CERT_FILE": pem["cert"], "EMAILQ_REDIS_TLS_KEY_FILE": pem["key"]})
    assert str(settings.redis_tls_cert_file) == pem["cert"]


def test_a_bad_ca_file_stops_the_command_at_start(settings_env, redis_client, pem, tmp_path):
    env = {**settings_env, "EMAILQ_REDIS_URL": settings_env["EMAILQ_REDIS_URL"].replace("redis://", "rediss://")}
    result = run_emailq(SEND, {**env, "EMAILQ_REDIS_TLS_CA_FILE": pem["junk"]}, tmp_path)
    assert_refused_naming(result, "EMAILQ_REDIS_TLS_CA_FILE")


def test_flower_basic_auth_takes_one_pair_per_operator(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMAILQ_FLOWER_BASIC_AUTH", "ops:pw1,alice:s3cr:et")
    get_settings.cache_clear()
    try:
        auth = get_settings().flower_basic_auth
    finally:
        get_settings.cache_clear()
    assert auth is not None and auth.get_secret_value() == "ops:pw1,alice:s3cr:et"


def test_a_bad_second_operator_is_refused_without_echoing_the_first_password(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMAILQ_FLOWER_BASIC_AUTH", "ops:hunter2,alice")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert "hunter2" not in str(raised.value) and "EMAILQ_FLOWER_BASIC_AUTH" in str(raised.value)
