"""`.env.example` documents every setting with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from emailq.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def documented() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^#?(EMAILQ_[A-Z_]+)=(.*)$", text, re.MULTILINE))


def test_env_example_lists_every_setting_and_nothing_else():
    names = {f"EMAILQ_{name.upper()}" for name in Settings.model_fields}
    assert set(documented()) == names


def test_env_example_shows_the_real_defaults():
    defaults = Settings(_env_file=None)
    for name, shown in documented().items():
        value = getattr(defaults, name.removeprefix("EMAILQ_").lower())
        if name == "EMAILQ_DATA_DIR":
            assert Path(shown).expanduser() == value
        elif value is None:
            assert shown == "", name
        else:
            assert shown == str(value).lower() if isinstance(value, bool) else shown == str(value), name
