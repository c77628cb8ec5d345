"""Where emails are POSTed: the primary endpoint and, when set, the fallback.

Each endpoint is its URL with its own Authorization value and signing keys, built once
from the settings. Both receive the same body and the same `Idempotency-Key`; only these
differ, since the two are different providers with different credentials. An endpoint's
`repr` never shows its headers or keys (they hold secrets).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import SecretStr

from emailq.settings import Settings
from emailq.worker.delivery.signing import decode_secrets, signature_headers

PRIMARY = "primary"
FALLBACK = "fallback"
USER_AGENT = "emailq/0.1"


@dataclass(frozen=True)
class Endpoint:
    name: str  # PRIMARY or FALLBACK: what logs, metrics and the DLQ history call it
    url: str
    headers: tuple[str, ...] = field(repr=False)
    keys: tuple[bytes, ...] = field(repr=False, default=())

    def request_headers(self, message_id: str, body: bytes) -> list[str]:
        """The header lines of one POST of `body`, signed when this endpoint has keys."""
        headers = [*self.headers, f"Idempotency-Key: {message_id}"]
        if self.keys:
            signed = signature_headers(list(self.keys), message_id, int(time.time()), body)
            headers.extend(f"{name}: {value}" for name, value in signed.items())
        return headers


def primary(settings: Settings) -> Endpoint:
    if settings.endpoint_url is None:
        raise ValueError("EMAILQ_ENDPOINT_URL is required to deliver")
    return _endpoint(PRIMARY, str(settings.endpoint_url), settings.endpoint_authorization, settings.signing_secret)


def fallback(settings: Settings) -> Endpoint | None:
    if settings.fallback_endpoint_url is None:
        return None
    return _endpoint(
        FALLBACK,
        str(settings.fallback_endpoint_url),
        settings.fallback_endpoint_authorization,
        settings.fallback_signing_secret,
    )


def _endpoint(name: str, url: str, authorization: SecretStr | None, signing_secret: SecretStr | None) -> Endpoint:
    headers = ["Content-Type: application/json", f"User-Agent: {USER_AGENT}"]
    if authorization is not None:
        headers.append(f"Authorization: {authorization.get_secret_value()}")
    keys = decode_secrets(signing_secret.get_secret_value()) if signing_secret is not None else []
    return Endpoint(name, url, tuple(headers), tuple(keys))
