"""Every Redis key under `EMAILQ_REDIS_KEY_PREFIX`, and the setting's validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from emailq.store.keys import Keys
from emailq.settings import Settings


def settings(**values: str) -> Settings:
    return Settings(_env_file=None, **values)


def every_key(keys: Keys) -> list[str]:
    properties = [getattr(keys, name) for name, value in vars(Keys).items() if isinstance(value, property)]
    return [
        *properties,
        keys.inflight("w1"),
        keys.alive("w1"),
        keys.lease("due"),
        keys.idempotency("abc"),
        keys.dlq_by_reason("rejected"),
        keys.dlq_by_type("SignIn"),
        keys.dlq_by_type(None),
        keys.trace_of("m1"),
    ]


def test_the_prefix_is_required():
    with pytest.raises(TypeError):
        Keys("emailq")  # type: ignore[call-arg]


def test_every_key_starts_with_the_prefix_then_the_queue():
    keys = Keys("emailq", prefix="tenant-a:")
    shown = every_key(keys)
    assert len(shown) == 26
    assert all(key.startswith("tenant-a:emailq") for key in shown), shown
    assert keys.interactive == "tenant-a:emailq"
    assert keys.bulk == "tenant-a:emailq:bulk"
    assert keys.dlq_index == "tenant-a:emailq:dlq:index"
    assert keys.inflight("w1") == "tenant-a:emailq:inflight:w1"


def test_without_a_prefix_the_keys_are_those_of_earlier_releases():
    keys = Keys("emailq", prefix="")
    assert (keys.interactive, keys.bulk, keys.wake, keys.schedule, keys.dlq) == (
        "emailq",
        "emailq:bulk",
        "emailq:wake",
        "emailq:schedule",
        "emailq:dlq",
    )
    assert keys.idempotency("h") == "emailq:idem:h"


def test_keys_of_the_settings_take_queue_and_prefix():
    keys = Keys.of(settings(queue="mail", redis_key_prefix="b:"))
    assert keys == Keys("mail", prefix="b:")
    assert keys.owners == "b:mail:owners"


def test_no_prefix_by_default():
    assert settings().redis_key_prefix == ""
    assert Keys.of(settings()).interactive == "emailq"


@pytest.mark.parametrize("prefix", ["tenant-a:", "a:", "{tenant}:", "prod/emails.", "x" * 64])
def test_prefixes_that_are_accepted(prefix):
    assert settings(redis_key_prefix=prefix).redis_key_prefix == prefix


@pytest.mark.parametrize("prefix", ["tenant a:", "tenant\t", "a*:", "a?", "[a]", "caf\u00e9:", "a\n", "x" * 65])
def test_prefixes_that_are_refused(prefix):
    with pytest.raises(ValidationError, match="at most 64 characters"):
        settings(redis_key_prefix=prefix)
