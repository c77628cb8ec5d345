"""The message contract: Logto's `SendMessageData`, and the envelope it travels in.

The endpoint receives exactly `Email.body()`; the envelope (id, times, attempts) stays on
the queue, and its id travels as the `Idempotency-Key` header.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from emailq.address import EmailNotValidError, check_address
from emailq.errors import InvalidMessage

TEMPLATE_TYPES = frozenset(
    {
        "SignIn",
        "Register",
        "ForgotPassword",
        "OrganizationInvitation",
        "Generic",
        "UserPermissionValidation",
        "BindNewIdentifier",
        "MfaVerification",
        "BindMfa",
    }
)
KNOWN_PAYLOAD_STRINGS = ("code", "link", "locale", "uiLocales")
# Values a dashboard reader could use to sign in as the recipient.
SECRET_PAYLOAD_KEYS = frozenset({"code", "link"})
MAX_TYPE_LENGTH = 100


class Email(BaseModel):
    """One email to send, as Logto's HTTP email connector describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    to: str
    type: str
    payload: dict[str, Any]
    ip: str | None = None

    @field_validator("to")
    @classmethod
    def _one_address(cls, to: str, info: ValidationInfo) -> str:
        if info.context and info.context.get("from_queue"):
            # The producer ran the full check before enqueueing; the worker, which reads
            # every email again, only makes sure the value is one plain address.
            if "@" in to and len(to) <= 320 and to.isprintable() and not any(c in to for c in " ,;<>"):
                return to
            raise ValueError("not a valid email address")
        # email-validator accepts no CR/LF or commas, so the value is safe in a header.
        try:
            check_address(to)
        except EmailNotValidError as error:
            raise ValueError(f"not a valid email address: {error}") from None
        return to

    @field_validator("type")
    @classmethod
    def _bounded_type(cls, value: str) -> str:
        if not value or len(value) > MAX_TYPE_LENGTH or not value.isprintable():
            raise ValueError(f"must be 1 to {MAX_TYPE_LENGTH} printable characters")
        return value

    @field_validator("payload")
    @classmethod
    def _known_keys_are_strings(cls, payload: dict[str, Any]) -> dict[str, Any]:
        for key in KNOWN_PAYLOAD_STRINGS:
            if key in payload and not isinstance(payload[key], str):
                raise ValueError(f"{key} must be a string")
        return payload

    def body(self) -> dict[str, Any]:
        """The JSON object POSTed to the endpoint: `to`, `type`, `payload`, and `ip` if set."""
        return self.model_dump(exclude_none=True)


def parse_email(data: Any, *, allow_any_type: bool = False, max_bytes: int | None = None) -> Email:
    """Validate one `SendMessageData`; raises InvalidMessage listing every fault."""
    email = _valid(data)
    _check_type(email.type, allow_any_type)
    if max_bytes is not None:
        _check_size(_compact(email.body()), max_bytes)
    return email


def checked_body(data: Any, *, allow_any_type: bool, max_bytes: int) -> tuple[dict[str, Any], str | None]:
    """`parse_email`'s verdict, given as what the producer writes next: the email's
    `body()`, and that body in compact JSON as the envelope carries it (`fresh_envelope`),
    or None when the body holds a NaN or an infinity (which the envelope's dump writes
    as null)."""
    body = _plain_body(data)
    if body is None:
        body = _valid(data).body()
    _check_type(body["type"], allow_any_type)
    try:
        text = _finite(body)
    except ValueError:
        _check_size(_compact(body), max_bytes)
        return body, None
    _check_size(text, max_bytes)
    return body, text


_FIELDS = frozenset(Email.model_fields)


def _plain_body(data: Any) -> dict[str, Any] | None:
    """`Email.model_validate(data).body()` without the model, for what the ingest nearly
    always receives: a dict of the very types the model's strict fields take, that passes
    the model's own checks (about 5 µs a request less). None for anything else, and for
    every email those checks refuse, so that the model gives its verdict and its words."""
    if type(data) is not dict or not data.keys() <= _FIELDS:
        return None
    to, kind, payload, ip = data.get("to"), data.get("type"), data.get("payload"), data.get("ip")
    if type(to) is not str or type(kind) is not str or type(payload) is not dict or not (ip is None or type(ip) is str):
        return None
    if not all(type(key) is str for key in payload):
        return None
    try:
        check_address(to)
        Email._bounded_type(kind)
        Email._known_keys_are_strings(payload)
    except ValueError:  # EmailNotValidError is one
        return None
    body = {"to": to, "type": kind, "payload": payload}
    if ip is not None:
        body["ip"] = ip
    return body


def _valid(data: Any) -> Email:
    if not isinstance(data, dict):
        raise InvalidMessage([f"must be a JSON object, got {_json_kind(data)}"])
    try:
        return Email.model_validate(data)
    except ValidationError as error:
        raise InvalidMessage([_describe(e) for e in error.errors()]) from None


def _check_type(email_type: str, allow_any_type: bool) -> None:
    if not allow_any_type and email_type not in TEMPLATE_TYPES:
        raise InvalidMessage(
            [
                f"type: unknown template type {email_type!r} (expected one of "
                f"{', '.join(sorted(TEMPLATE_TYPES))}; EMAILQ_ALLOW_ANY_TYPE=true accepts any)"
            ]
        )


def _check_size(body_json: str, max_bytes: int) -> None:
    size = len(body_json.encode())
    if size > max_bytes:
        raise InvalidMessage([f"message is {size} bytes, over the limit of {max_bytes} (EMAILQ_MAX_MESSAGE_BYTES)"])


# Built once: `json.dumps` with `separators` builds an encoder per call.
_compact = json.JSONEncoder(separators=(",", ":")).encode
_finite = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "message"
    kind = error["type"]
    if kind == "missing":
        return f"{where}: required"
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "dict_type":
        return f"{where}: must be a JSON object"
    if kind == "string_type":
        return f"{where}: must be a string"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")


# The envelope's format (`v`, a major version): 2 since it carries its attempt history;
# envelopes without `v` were written by the first release (1) and read the same way.
# The rule between releases: readers ignore envelope fields they do not know, so a new
# optional field keeps the format; anything an older worker would get wrong without it
# (a field it must act on, a changed meaning, a new field in `message`, which the
# endpoint receives as it is) is a new format. A worker neither sends nor dead-letters a
# format newer than its own: it gives it back for an upgraded worker (`newer_format`).
ENVELOPE_FORMAT = 2


def newer_format(data: Any) -> int | None:
    """The format of the envelope `data` (as it travels) when it is newer than this
    release's `ENVELOPE_FORMAT`, else None."""
    version = data.get("v") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > ENVELOPE_FORMAT:
        return version
    return None


class Envelope(BaseModel):
    """An email on the queue, with what the worker needs and the endpoint never sees."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # Printable ASCII without spaces: the id travels as the Idempotency-Key header.
    v: int = Field(default=1, ge=1, le=ENVELOPE_FORMAT)
    id: str = Field(pattern=r"^[!-~]{1,200}$")
    created_at: float
    expires_at: float
    # Deliveries begun before this one (0 when fresh; replay starts a fresh budget).
    attempts: int = 0
    # Each earlier attempt's outcome, oldest first: {"at": time, "status": int} or
    # {"at": time, "error": str}; the DLQ entry shows them all.
    history: list[dict[str, Any]] = Field(default_factory=list)
    # True for the bulk lane (set only then, so that interactive envelopes stay small).
    bulk: bool | None = None
    message: Email

    @classmethod
    def wrap(cls, email: Email, ttl_seconds: float, *, id: str | None = None, bulk: bool = False) -> Envelope:
        now = time.time()
        return cls(
            v=ENVELOPE_FORMAT,
            id=id or new_id(),
            created_at=now,
            expires_at=now + ttl_seconds,
            bulk=bulk or None,
            message=email,
        )

    def dump(self) -> dict[str, Any]:
        """The envelope as JSON-ready data (how it travels on the queue and sits in the DLQ)."""
        return self.model_dump(mode="json", exclude_none=True)

    def after(self, attempt: dict[str, Any]) -> Envelope:
        """This envelope once `attempt` has failed: one more attempt spent, and recorded."""
        return self.model_copy(update={"attempts": self.attempts + 1, "history": [*self.history, attempt]})

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def fresh_envelope(body_json: str, id: str, created_at: float, expires_at: float, bulk: bool) -> str:
    """The compact JSON of a fresh envelope's `dump()` (v 2, no attempt yet), written
    without building an `Envelope`: the ingest writes one per request, and the model's
    validation and dump cost it about as much as the email's own checks. `body_json` is
    the email's body in compact JSON with no NaN or infinity (`checked_body`); the
    envelope's own fields come in the model's order, as `dump()` gives them."""
    head = f'{{"v":{ENVELOPE_FORMAT},"id":{_compact(id)},"created_at":{created_at!r},"expires_at":{expires_at!r},"attempts":0,"history":[],'
    return head + ('"bulk":true,"message":' if bulk else '"message":') + body_json + "}"


def new_id() -> str:
    """A random UUID (version 4) as `str(uuid.uuid4())` writes it, in half the time: the
    ingest makes two per email (the envelope's id, the task message's delivery tag)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def masked(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of an email body safe to show: one-time codes and links replaced."""
    payload = {key: ("***" if key in SECRET_PAYLOAD_KEYS else value) for key, value in body.get("payload", {}).items()}
    return {**body, "payload": payload}
