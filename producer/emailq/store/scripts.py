"""emailq's Lua scripts, read from the package's `lua/` folder.

Each script is one `.lua` file whose header says the move it makes, its KEYS and its
ARGV. A line `-- include: <file>.lua` puts a library file (functions shared by several
scripts, such as `to_lane`) before the script's own text, once however many includes
name it; the constants below come first of all, as Lua locals, so that Python and Lua
read each of them from one place.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Wake tokens kept at most in <p><q>:wake (`wake.lua`): one per email, so a burst of
# enqueues cannot grow it past this.
WAKE_TOKENS_KEPT = 1000
# A take by an owner whose heartbeat key is gone waits this long before trying again.
NO_HEARTBEAT_WAIT_MS = 100

# An email's trace keeps its last this many bytes of events (about 60 events: a replayed
# email keeps moving).
TRACE_BYTES_KEPT = 4096
# Arguments one Lua call passes at most when it pushes or deletes many (`trace.lua`): far
# below Lua's C stack limit (8,000), and a batch of 1,000 is one call.
INDEX_PUSH_MOST = 1000

_CONSTANTS = {
    "WAKE_TOKENS_KEPT": WAKE_TOKENS_KEPT,
    "NO_HEARTBEAT_WAIT_MS": NO_HEARTBEAT_WAIT_MS,
    "TRACE_BYTES_KEPT": TRACE_BYTES_KEPT,
    "INDEX_PUSH_MOST": INDEX_PUSH_MOST,
}
# Every script made so far, by SHA-1: `with_source`.
_loaded: dict[str, Script] = {}
_INCLUDE = re.compile(r"^-- include: (\S+\.lua)$", re.MULTILINE)


@dataclass(frozen=True)
class Script:
    """One script's whole source (constants and includes resolved) and its SHA-1."""

    name: str
    source: str
    sha: str

    def command(self, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        """An EVALSHA of it, as a command tuple for a raw round trip (the producers'): the
        source, thousands of bytes, is sent only when Redis answers NOSCRIPT (see
        `with_source`)."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


def with_source(command: tuple[Any, ...]) -> tuple[Any, ...]:
    """The EVAL that an EVALSHA `command` stands for: what to send after a NOSCRIPT answer
    (a restarted or failed-over Redis has no script cache; it ran nothing), and which
    caches the script again."""
    return ("EVAL", _loaded[command[1]].source, *command[2:])


@functools.cache
def script(name: str) -> Script:
    """The script in `lua/<name>.lua`, ready to run."""
    body = _resolve(f"{name}.lua", set())
    constants = "".join(f"local {key} = {value}\n" for key, value in _CONSTANTS.items())
    source = constants + body
    made = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    _loaded[made.sha] = made
    return made


def _resolve(filename: str, included: set[str]) -> str:
    text = resources.files("emailq.store").joinpath("lua", filename).read_text()
    parts = []
    for library in _INCLUDE.findall(text):
        if library not in included:
            included.add(library)
            parts.append(_resolve(library, included))
    return "".join(parts) + text
