"""Standard Webhooks signatures, so an endpoint can tell our requests from forgeries.

`EMAILQ_SIGNING_SECRET` holds one secret, or several separated by spaces while keys are
rotated: each signs, and the endpoint accepts the request if any signature verifies.
A `whsec_` prefix marks a base64 secret, as the Standard Webhooks libraries issue them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def decode_secrets(value: str) -> list[bytes]:
    """The signing keys in `EMAILQ_SIGNING_SECRET`: a `whsec_` secret base64-decoded, any
    other used as its UTF-8 bytes."""
    keys = []
    for secret in value.split():
        if secret.startswith("whsec_"):
            keys.append(base64.b64decode(secret.removeprefix("whsec_")))
        else:
            keys.append(secret.encode())
    return keys


def signature_headers(keys: list[bytes], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers for one request."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signatures = " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }
