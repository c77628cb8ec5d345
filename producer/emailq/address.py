"""Whether a string is one email address: exactly what email-validator answers, and fast for
the plain ones that nearly every sign-in sends.

email-validator reads an address character by character (for quoting, display names and
Unicode) and checks its domain (IDNA, reserved names) anew each time: about 20 µs, as
much as the rest of an ingest request. A plain address (ASCII, an unquoted dot-atom
before the @-sign, letters, digits, dots and dashes after it) skips straight to the two
checks email-validator makes of such an address: its domain, whose verdict is memoised,
and its lengths. Everything else, and every address it refuses, goes through
email-validator itself, so the verdict and the message are always its own.
"""

from __future__ import annotations

import functools
import re

import email_validator
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import DOT_ATOM_TEXT, EMAIL_MAX_LENGTH
from email_validator.syntax import validate_email_domain_name

__all__ = ["EmailNotValidError", "check_address"]

# An ASCII dot-atom local part (what email-validator's split finds unquoted, with no
# display name), one @-sign, and a domain that IDNA leaves to its own rules.
_PLAIN = re.compile(r"([A-Za-z0-9_!#$%&'*+\-/=?^`{|}~.]+)@([A-Za-z0-9.\-]+)")


def check_address(to: str) -> None:
    """Raise EmailNotValidError, as `validate_email(to, check_deliverability=False)` would,
    unless `to` is one valid email address."""
    plain = _PLAIN.fullmatch(to)
    if plain is not None and not email_validator.STRICT:
        local, domain = plain.groups()
        longest = _domain_length(domain, _options())
        # The local part is ASCII: its length is its UTF-8 length, as email-validator counts.
        if longest is not None and DOT_ATOM_TEXT.match(local) and len(local) + 1 + longest <= EMAIL_MAX_LENGTH:
            return
    validate_email(to, check_deliverability=False)


def _options() -> tuple[object, ...]:
    """email-validator's module-wide options that decide a domain's verdict (an app may
    change them), so that a memoised verdict is reused only under the same ones."""
    return (email_validator.TEST_ENVIRONMENT, email_validator.GLOBALLY_DELIVERABLE, tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES))


@functools.lru_cache(maxsize=4096)
def _domain_length(domain: str, options: tuple[object, ...]) -> int | None:
    """The longest UTF-8 form of valid `domain` (as given, IDNA ASCII, Unicode), which
    email-validator's length checks count; None when email-validator refuses it."""
    test_environment, globally_deliverable, _ = options
    try:
        forms = validate_email_domain_name(domain, test_environment=bool(test_environment), globally_deliverable=bool(globally_deliverable))
    except EmailNotValidError:
        return None
    return max(len(domain), len(forms["ascii_domain"]), len(forms["domain"].encode()))
