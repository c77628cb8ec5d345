"""What an operator sees of a dead letter's raw text (`DeadLetter.raw`: a queue item the
worker could not read as an email) without `--reveal`: one-time codes and links masked,
as they are in every other entry.

The raw text is whatever was on the queue, so the masking assumes no shape: JSON values
under the keys `code` and `link` (`SECRET_PAYLOAD_KEYS`) at any depth; a kombu message's
base64 body decoded, shown decoded and masked the same way (base64 hides a code from
the eye, not from anyone who decodes it); and in any other text, the values after a
`code` or `link` key (JSON, Python or form quoting), quoted runs of 4 to 10 digits, and
URLs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from emailq.message import SECRET_PAYLOAD_KEYS

MASK = "***"
_KEYS = "|".join(sorted(SECRET_PAYLOAD_KEYS))
_QUOTED_VALUE = re.compile(rf"""(?i)(["']?\b(?:{_KEYS})\b["']?\s*[:=]\s*)(["'])(?:\\.|(?!\2).)*\2""")
_BARE_VALUE = re.compile(rf"""(?i)(\b(?:{_KEYS})=)[^&\s"',;}}\]]+""")
_QUOTED_DIGITS = re.compile(r"""(["'])\d{4,10}\1""")
_URL = re.compile(r"""(?i)\bhttps?://[^\s"'<>]+""")
BODY_SHOWN = "shown decoded and masked (--reveal: as stored)"


def masked_raw(text: str) -> str:
    """`text` with codes and links masked; JSON stays JSON."""
    try:
        data = json.loads(text)
    except ValueError:
        return _masked_text(text)
    return json.dumps(_masked_json(data))


def _masked_json(value: Any, key: str | None = None) -> Any:
    if key is not None and key.lower() in SECRET_PAYLOAD_KEYS:
        return MASK
    if isinstance(value, dict):
        masked = {k: _masked_json(v, str(k)) for k, v in value.items()}
        properties = masked.get("properties")
        if isinstance(masked.get("body"), str) and isinstance(properties, dict) and properties.get("body_encoding") == "base64":
            try:
                body = base64.b64decode(masked["body"], validate=True).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                return masked  # not base64 after all: masked as a string already
            try:
                masked["body"] = _masked_json(json.loads(body))
            except ValueError:
                masked["body"] = _masked_text(body)
            masked["properties"] = {**properties, "body_encoding": BODY_SHOWN}
        return masked
    if isinstance(value, list):
        return [_masked_json(v) for v in value]
    if isinstance(value, str):
        return _masked_text(value)
    return value


def _masked_text(text: str) -> str:
    text = _QUOTED_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    text = _BARE_VALUE.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _QUOTED_DIGITS.sub(lambda m: f"{m.group(1)}{MASK}{m.group(1)}", text)
    return _URL.sub(MASK, text)
