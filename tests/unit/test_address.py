"""`check_address` answers exactly what email-validator answers: the same addresses
accepted, the same refused, with the same message."""

from __future__ import annotations

import email_validator
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from emailq.address import check_address


def verdict(check, to: str) -> str | None:
    """None when `check` accepts `to`, else its message."""
    try:
        check(to)
    except EmailNotValidError as error:
        return str(error)
    return None


def email_validators(to: str) -> None:
    validate_email(to, check_deliverability=False)


# Mostly the characters plain addresses are made of, and a few that make them unusual.
tricky = st.lists(st.sampled_from([*'aZ09.-_+@"<> ,\\é\u0301xn', "xn--", "ü", "\uff20", "test", "local"]), max_size=20).map("".join)
long_labels = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.text(alphabet="ab.", min_size=1, max_size=80),
    st.lists(st.text(alphabet="ab0-", min_size=1, max_size=70), min_size=1, max_size=5),
    st.sampled_from(["com", "io", "test", "local", "localhost", "c0m", "xn--p1ai", "arpa"]),
)


@settings(max_examples=1500)
@given(st.one_of(st.emails(), tricky, long_labels, st.text(max_size=40)))
@example("foo@logto.io")
@example("info@EXAMPLE.com")
@example("a..b@example.com")
@example(".a@example.com")
@example("a.@example.com")
@example("a@example.com.")
@example("a@example..com")
@example("a@-example.com")
@example("a@example-.com")
@example("a@localhost")
@example("a@example.local")
@example("a@example.test")
@example("a@nodot")
@example("a@example.c0m")
@example("a@ab--cd.com")
@example("a@xn--bcher-kva.com")
@example("a@xn--zz.com")
@example("a@[127.0.0.1]")
@example('"quoted"@example.com')
@example("Name <a@example.com>")
@example("a@example.com\n")
@example("x" * 64 + "@example.com")
@example("x" * 65 + "@example.com")
@example("x" * 242 + "@example.com")
@example("x" * 243 + "@example.com")
@example("a@" + "b" * 63 + ".com")
@example("a@" + "b" * 64 + ".com")
@example("a@" + ".".join(["b" * 60] * 4) + ".com")
def test_the_verdict_and_message_are_email_validators(to):
    assert verdict(check_address, to) == verdict(email_validators, to)


@pytest.mark.parametrize(
    ("option", "value", "address"),
    [
        ("TEST_ENVIRONMENT", True, "a@example.test"),
        ("GLOBALLY_DELIVERABLE", False, "a@intranet"),
        ("SPECIAL_USE_DOMAIN_NAMES", ["arpa"], "a@example.local"),
        ("SPECIAL_USE_DOMAIN_NAMES", [*email_validator.SPECIAL_USE_DOMAIN_NAMES, "example.com"], "a@example.com"),
        ("STRICT", True, "x" * 65 + "@example.com"),
    ],
)
def test_email_validators_module_options_are_followed(monkeypatch, option, value, address):
    verdict(check_address, address.replace("x" * 65, "x"))  # memoise the domain's verdict first
    before = verdict(check_address, address)
    monkeypatch.setattr(email_validator, option, value)
    assert verdict(check_address, address) == verdict(email_validators, address)
    assert verdict(check_address, address) != before


def test_a_plain_address_is_answered_from_the_memoised_domain():
    from emailq.address import _domain_length

    check_address("first@memo.example.org")
    hits = _domain_length.cache_info().hits
    check_address("second@memo.example.org")
    assert _domain_length.cache_info().hits == hits + 1
