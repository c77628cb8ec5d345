"""The one typed settings object, read once from the environment and a `.env` file.

Every name is `EMAILQ_<FIELD>`; `.env.example` lists each with its default.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from pydantic import (
    AnyUrl,
    Field,
    GetCoreSchemaHandler,
    HttpUrl,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema
from pydantic_settings import BaseSettings, SettingsConfigDict

from emailq.errors import ConfigError
from emailq.tls_files import check_tls_files

ENV_PREFIX = "EMAILQ_"

# What an HTTP header value may hold (RFC 9110 field-value, without obs-text): visible
# ASCII, space and tab. Anything else (CR/LF, controls, non-ASCII) either splits the
# request or makes the HTTP client fail on every delivery.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_MASK = "***"
KEY_PREFIX_MAX = 64
_KEY_PREFIX = re.compile(rf"[A-Za-z0-9_.:{{}}/-]{{0,{KEY_PREFIX_MAX}}}")


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "emailq"


@dataclass(frozen=True)
class SentinelUrl:
    """Celery's Sentinel form of `EMAILQ_REDIS_URL`:
    `sentinel://[[user]:password@]host:port[/db][;sentinel://host:port…]`.

    The password (and user, and database) are the Redis primary's, as in Celery, on the
    first part (kombu reads only that one). `str()` is the URL as written.
    """

    text: str
    sentinels: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0

    scheme = "sentinel"

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"SentinelUrl({self.masked()!r})"

    @classmethod
    def parse(cls, text: str) -> SentinelUrl:
        """Raises ValueError saying which part is wrong (never echoing a password)."""
        sentinels: list[tuple[str, int]] = []
        first: tuple[str | None, str | None, int] = (None, None, 0)
        parts = text.split(";")
        for number, part in enumerate(parts, 1):
            where = f"part {number} of {len(parts)}" if len(parts) > 1 else "the URL"
            split = urlsplit(part.strip())
            try:
                host, port = split.hostname, split.port
            except ValueError:
                host, port = None, None
            if split.scheme != "sentinel" or not host or not port or split.query or split.fragment:
                raise ValueError(f"{where} must be sentinel://host:port, as in sentinel://[:password@]host:port[;sentinel://host:port…]")
            path = split.path.strip("/")
            if path and not path.isdigit():
                raise ValueError(f"{where}: the database after the port must be a number")
            sentinels.append((host, port))
            username = unquote(split.username) if split.username else None
            password = unquote(split.password) if split.password is not None else None
            if username is not None and password is None:
                username, password = None, username  # sentinel://secret@host, as redis:// reads it
            given = (username, password, int(path) if path else 0)
            if number == 1:
                first = given
            elif given != (None, None, 0) and given != first:
                # Celery and Flower (kombu) read them from the first part only.
                raise ValueError(f"{where}: give the password and database on the first part only")
        return cls(text, tuple(sentinels), *first)

    def masked(self) -> str:
        """The URL with each password replaced by ***."""
        shown = []
        for part in self.text.split(";"):
            scheme, _, rest = part.strip().partition("://")
            userinfo, at, address = rest.rpartition("@")
            if at:
                name, colon, _secret = userinfo.partition(":")
                userinfo = f"{name}:{_MASK}@" if colon else f"{_MASK}@"
            shown.append(f"{scheme}://{userinfo}{address}")
        return ";".join(shown)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # Built only by the `redis_url` validator below; never parsed from a string here.
        return core_schema.is_instance_schema(cls)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True)

    # Where the queue and the DLQ live: redis://, rediss://, or Celery's
    # sentinel://host:port;sentinel://… (with redis_sentinel_master). Unset: the embedded
    # Redis under data_dir.
    redis_url: AnyUrl | SentinelUrl | None = None
    # The service name Sentinel monitors (`sentinel monitor <name> …`), and the password
    # the Sentinels themselves ask for, if any (the primary's is in the URL).
    redis_sentinel_master: str | None = Field(default=None, pattern=r"^[!-~]{1,200}$")
    redis_sentinel_password: SecretStr | None = None
    # TLS. One server: rediss://. On Sentinel: redis_tls for the Redis servers and
    # redis_sentinel_tls for the Sentinels (unset: the same as redis_tls), since managed
    # and operator-run deployments turn it on for both or only for one. The CA file
    # verifies every server (unset: the system's trust store); the client certificate and
    # key are for servers that ask for one (`tls-auth-clients`, on by default in Redis).
    redis_tls: bool = False
    redis_sentinel_tls: bool | None = None
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # Off only where certificates do not name the addresses Sentinel hands out (often
    # IPs): the chain is still verified against the CA.
    redis_tls_check_hostname: bool = True
    # Replicas that must confirm each enqueue (Redis WAIT, within redis_timeout) before
    # it is acknowledged; fewer raise QueueUnavailable(maybe_enqueued=True). 0: no wait.
    redis_min_replicas: int = Field(default=0, ge=0, le=100)
    data_dir: Path = Field(default_factory=_default_data_dir)
    queue: str = Field(default="emailq", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    # Put before every Redis key emailq and kombu write (`emailq.store.keys`), so that several
    # deployments share one Redis database, each seeing only its own emails and workers.
    redis_key_prefix: str = ""
    # How long a producer may wait on Redis before giving up; keeps web requests fast.
    redis_timeout: float = Field(default=0.5, gt=0, le=60)

    # The message contract.
    allow_any_type: bool = False
    max_message_bytes: int = Field(default=65536, ge=256, le=10 * 1024 * 1024)
    message_ttl_seconds: float = Field(default=900, gt=0)

    # Lanes: these types (and anything sent with bulk=True / --bulk) go to the bulk lane,
    # behind the interactive one; a worker still takes bulk first once every
    # `bulk_every` takes. Bulk emails live longer: a rate-limited send of 100,000 must not
    # expire on the queue.
    bulk_types: str = Field(default="OrganizationInvitation,Generic", pattern=r"^[A-Za-z0-9_,. -]*$")
    bulk_every: int = Field(default=10, ge=0, le=1000)
    bulk_ttl_seconds: float = Field(default=21600, gt=0)
    # Deliveries per second to the endpoint across every worker on this Redis; unset: no
    # limit. A burst of at most a tenth of a second's worth is allowed.
    rate_limit: float | None = Field(default=None, gt=0, le=100000)

    # Delivery.
    # The HTTP client that POSTs: libcurl (the fastest) or httpx (pure Python).
    http_client: Literal["curl", "httpx"] = "curl"
    endpoint_url: HttpUrl | None = None
    endpoint_authorization: SecretStr | None = None
    signing_secret: SecretStr | None = None
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    request_timeout: float = Field(default=10.0, gt=0, le=600)
    max_response_bytes: int = Field(default=65536, ge=1024)
    # A second endpoint (another provider): an attempt that fails on the primary with an
    # outage or a 429 is made again there at once, and while the primary's breaker is
    # open every email goes there (`emailq.worker.delivery.failover`). Unset: none.
    fallback_endpoint_url: HttpUrl | None = None
    fallback_endpoint_authorization: SecretStr | None = None
    fallback_signing_secret: SecretStr | None = None
    # Planned maintenance of the primary: every email goes to the fallback, none to the primary.
    fallback_only: bool = False
    max_attempts: int = Field(default=8, ge=1, le=100)
    retry_base_seconds: float = Field(default=1.0, gt=0, le=3600)
    retry_max_seconds: float = Field(default=60.0, gt=0, le=86400)
    # How many distinct emails failing with an outage on their 3rd+ attempt, and as many
    # fresh emails failing on their 1st, with nothing delivered in between, make a worker
    # stop taking emails (0: never); and how often it then lets one through as a probe.
    breaker_threshold: int = Field(default=10, ge=0)
    breaker_probe_seconds: float = Field(default=2.0, gt=0, le=600)

    # The worker.
    # Deliveries in flight per worker process (threads). A worker delivers at most
    # concurrency / latency: 256 would cap it near 1,024/s against a 250 ms endpoint,
    # under arq; 512 measured 1,692/s there (docs/performance.md).
    concurrency: int = Field(default=512, ge=1, le=1000)
    # A worker that has not refreshed its heartbeat for this long is taken for dead, and
    # any other worker puts the emails it held back on the queue.
    heartbeat_seconds: float = Field(default=15.0, ge=2, le=600)
    # Backstop only: an email held this long by a worker that still looks alive goes back
    # on the queue. No delivery lasts longer than one attempt (EMAILQ_REQUEST_TIMEOUT).
    visibility_timeout: int = Field(default=300, ge=2)

    # The dead-letter queue's retention (entries hold addresses and codes: personal data):
    # the oldest entries beyond the count, and entries older than the age, are dropped.
    # 0 turns either limit off.
    dlq_max_entries: int = Field(default=10000, ge=0)
    dlq_max_age_seconds: float = Field(default=604800, ge=0)

    # Every email's whereabouts and attempts (`emailq trace`), kept this long after its
    # last move, for at most this many emails (the oldest go first): bounded, so that it
    # never fills a Redis running with noeviction. 0 seconds turns the trace off.
    trace_seconds: float = Field(default=86400, ge=0)
    trace_max_emails: int = Field(default=100_000, ge=1)

    # Operations.
    flower_basic_auth: SecretStr | None = None
    ingest_authorization: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    # Celery task events for Flower: only dead letters (cheap), or every task.
    task_events: Literal["failures", "all"] = "failures"
    # The worker's Prometheus endpoint; 0 turns it off (the ingest serves /metrics itself).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    @field_validator("redis_url", mode="wrap")
    @classmethod
    def _redis_scheme(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> AnyUrl | SentinelUrl | None:
        if isinstance(value, str) and value.strip().lower().startswith("sentinel:"):
            return SentinelUrl.parse(value.strip())
        url = handler(value)
        if isinstance(url, AnyUrl) and url.scheme not in ("redis", "rediss"):
            raise ValueError("must start with redis://, rediss:// or sentinel://")
        return url

    @field_validator("redis_key_prefix")
    @classmethod
    def _key_prefix_is_plain(cls, value: str) -> str:
        # No glob characters (the keys are SCANned by pattern), no spaces or controls.
        if not _KEY_PREFIX.fullmatch(value):
            raise ValueError(f"must be at most {KEY_PREFIX_MAX} characters of A-Z a-z 0-9 _ . : {{ }} / - (e.g. tenant-a:)")
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password(cls, value: SecretStr | None) -> SecretStr | None:
        # One `user:password` per operator, comma-separated, as Flower's --basic-auth takes
        # them (so no commas inside a password); the dead letters page logs the user name.
        # The message never quotes the value: it holds passwords.
        if value is not None:
            for pair in value.get_secret_value().split(","):
                user, colon, password = pair.partition(":")
                if not (user.strip() and colon and password):
                    raise ValueError("must be user:password, or several user:password pairs separated by commas")
        return value

    @field_validator("signing_secret", "fallback_signing_secret")
    @classmethod
    def _whsec_is_base64(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secrets = value.get_secret_value().split()
        if not secrets:
            # Set but blank would sign with no key at all: unset it to send unsigned requests.
            raise ValueError("must not be empty (unset it to send requests unsigned)")
        for secret in secrets:
            if secret.startswith("whsec_"):
                try:
                    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
                except binascii.Error:
                    raise ValueError("a whsec_ secret must be base64 after the prefix") from None
                if not key:
                    raise ValueError("a whsec_ secret must have a key after the prefix")
        return value

    @field_validator("endpoint_authorization", "fallback_endpoint_authorization")
    @classmethod
    def _authorization_is_a_header_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_header_value(value.get_secret_value())
        return value

    @field_validator("ingest_authorization")
    @classmethod
    def _ingest_authorization_can_match(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value  # the ingest then warns that it is open
        secret = value.get_secret_value()
        if not secret.strip():
            # Set but empty is a mistake, not a choice: unset is the explicit open door.
            raise ValueError("is set but empty: set the value Logto sends, or unset it")
        _check_header_value(secret)
        if secret != secret.strip(" \t"):
            # HTTP servers strip a header value's outer whitespace: it could never match.
            raise ValueError("must not start or end with whitespace")
        return value

    @model_validator(mode="after")
    def _sentinel_has_a_master(self) -> Settings:
        sentinel = isinstance(self.redis_url, SentinelUrl)
        if sentinel and self.redis_sentinel_master is None:
            raise ValueError(
                "EMAILQ_REDIS_SENTINEL_MASTER: required with a sentinel:// EMAILQ_REDIS_URL (the service name of `sentinel monitor <name> …`)"
            )
        for name in ("redis_sentinel_master", "redis_sentinel_password", "redis_sentinel_tls"):
            if not sentinel and getattr(self, name) is not None:
                raise ValueError(f"EMAILQ_{name.upper()}: set, but EMAILQ_REDIS_URL is not a sentinel:// URL")
        if self.redis_tls and not sentinel:
            raise ValueError("EMAILQ_REDIS_TLS: only for a sentinel:// EMAILQ_REDIS_URL; for one server write rediss://")
        return self

    @model_validator(mode="after")
    def _tls_files_load(self) -> Settings:
        files = {name: getattr(self, name) for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")}
        if not self.redis_server_tls() and not self.sentinel_tls():
            unused = [name for name, path in files.items() if path is not None]
            if not self.redis_tls_check_hostname:
                unused.append("redis_tls_check_hostname")
            if unused:
                raise ValueError(
                    f"EMAILQ_{unused[0].upper()}: set, but no Redis connection uses TLS (rediss://, or EMAILQ_REDIS_TLS / "
                    "EMAILQ_REDIS_SENTINEL_TLS with sentinel://)"
                )
            return self
        check_tls_files(self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        return self

    @model_validator(mode="after")
    def _fallback_is_another_endpoint(self) -> Settings:
        if self.fallback_endpoint_url is None:
            for name in ("fallback_endpoint_authorization", "fallback_signing_secret"):
                if getattr(self, name) is not None:
                    raise ValueError(f"EMAILQ_{name.upper()}: set, but EMAILQ_FALLBACK_ENDPOINT_URL is not")
            if self.fallback_only:
                raise ValueError("EMAILQ_FALLBACK_ONLY: set, but EMAILQ_FALLBACK_ENDPOINT_URL is not (there is nowhere else to send)")
        elif self.endpoint_url is not None and str(self.fallback_endpoint_url) == str(self.endpoint_url):
            # Failing over to the same service would double its load just when it is down.
            raise ValueError("EMAILQ_FALLBACK_ENDPOINT_URL: is EMAILQ_ENDPOINT_URL; give a second provider's URL, or unset it")
        return self

    @model_validator(mode="after")
    def _visibility_outlasts_delivery(self) -> Settings:
        longest = self.longest_delivery_seconds()
        if self.visibility_timeout <= longest:
            raise ValueError(
                f"EMAILQ_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must exceed the "
                f"longest delivery ({longest:.0f}s: EMAILQ_REQUEST_TIMEOUT x {longest / self.request_timeout:.0f})"
            )
        return self

    def redis_server_tls(self) -> bool:
        """Whether the connections to the Redis server(s) holding the queue use TLS."""
        if isinstance(self.redis_url, SentinelUrl):
            return self.redis_tls
        return self.redis_url is not None and self.redis_url.scheme == "rediss"

    def sentinel_tls(self) -> bool:
        """Whether the connections to the Sentinels use TLS."""
        if not isinstance(self.redis_url, SentinelUrl):
            return False
        return self.redis_tls if self.redis_sentinel_tls is None else self.redis_sentinel_tls

    def is_bulk(self, email_type: str) -> bool:
        """Whether emails of this type go to the bulk lane (`EMAILQ_BULK_TYPES`)."""
        return email_type in {t.strip() for t in self.bulk_types.split(",")}

    def longest_delivery_seconds(self) -> float:
        """How long a worker may hold one email: one attempt (the request timeout bounds
        it, connect included), with room for an email that waited for a free thread; with
        a fallback, one attempt more (a failed primary's is followed there at once)."""
        return (2 if self.fallback_endpoint_url is None else 3) * self.request_timeout

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() end up in logs and tracebacks: never with the Redis password.
        for name, value in super().__repr_args__():
            if name == "redis_url" and value is not None:
                value = masked_url(value)
            yield name, value


def masked_url(url: AnyUrl | SentinelUrl) -> str:
    """The URL with its password (in the userinfo or a `password=` query) replaced by ***."""
    if isinstance(url, SentinelUrl):
        return url.masked()
    userinfo = ""
    if url.password is not None:
        userinfo = f"{url.username or ''}:{_MASK}@"
    elif url.username:
        userinfo = f"{_MASK}@"  # redis://secret@host: the lone name is the password
    port = f":{url.port}" if url.port is not None else ""
    query = ""
    if url.query:
        pairs = parse_qsl(url.query, keep_blank_values=True)
        query = "?" + urlencode([(k, _MASK if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return f"{url.scheme}://{userinfo}{url.host or ''}{port}{url.path or ''}{query}"


def _check_header_value(value: str) -> None:
    """Raises ValueError unless `value` can be sent as an HTTP header value. The message
    says where the fault is, never what the (secret) value is."""
    if not value.strip(" \t"):
        raise ValueError("must not be empty")
    if not _HEADER_VALUE.fullmatch(value):
        bad = next(i for i, char in enumerate(value) if not _HEADER_VALUE.fullmatch(char))
        raise ValueError(
            f"must be printable ASCII, as an HTTP header value is (no line breaks, control or non-ASCII characters): character {bad + 1} is not"
        )


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if not field:
        return message
    return f"{ENV_PREFIX}{field.upper()}: {message}"


@functools.cache
def get_settings() -> Settings:
    """The settings, read once per process; raises ConfigError naming the bad setting."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
