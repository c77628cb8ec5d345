"""A part that dies with the command that started it (`emailq dev`).

`emailq dev` runs the worker, the ingest and Flower each in a session of its own, so that
Ctrl-C reaches `emailq dev` alone, which then stops them in order. A session of their own
also means that nothing stops them when `emailq dev` dies without running its cleanup
(`kill -9`, the OOM killer, a crash): they ran on, reconnecting to a stopped Redis every
second and holding their ports, and the next `emailq dev` could not start. So each part
is tied to its parent twice, either way enough on its own:

- on Linux the kernel sends the part SIGTERM when its parent dies (`PR_SET_PDEATHSIG`,
  set between fork and exec, so it holds before the part has run a line of Python);
- anywhere, the parent holds the write end of a pipe and the part the read end: a read
  returns end-of-file once the parent is gone, however it died. A thread in the part
  (`watch`) waits for that, stops the part as SIGTERM does, and kills it if it is not gone
  `GRACE_SECONDS` later: a part reconnecting to a Redis that went with its parent may
  never get round to exiting.

Parent side: `Lifeline`; part side: `watch` (the hidden `emailq --lifeline FD` option).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# Long enough for a worker's warm shutdown (it gives back what it holds) and Flower's
# state save; short enough that an orphan is gone before a user retries `emailq dev`.
GRACE_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Lifeline:
    """The parent's end: start each part with `popen_options()` and `--lifeline FD`; the
    parts see the pipe close when this process exits, whatever the cause."""

    def __init__(self) -> None:
        # Both ends are non-inheritable: only the parts get the read end (`pass_fds`), so
        # no other process of the parent's can keep the write end open.
        self.fd, self._write = os.pipe()

    def popen_options(self) -> dict[str, Any]:
        """`subprocess.Popen` keywords: a session of its own, the read end, and on Linux
        SIGTERM when this process dies."""
        return {"start_new_session": True, "pass_fds": (self.fd,), "preexec_fn": _die_with(os.getpid())}

    def close(self) -> None:
        """Cut it now, as this process's exit would: every part sees end-of-file."""
        os.close(self._write)


def _die_with(parent: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Looked up here, in the parent: the part's side between fork and exec only calls it.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # no prctl in this libc: the pipe alone

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before the signal was asked for: nobody would send it

    return set_death_signal


def watch(fd: int, grace: float = GRACE_SECONDS) -> None:
    """In a part: once the parent holding the other end of `fd` is gone, stop this process
    as SIGTERM does, and kill it (with its process group when it leads one) `grace`
    seconds later if it is still here."""
    threading.Thread(target=_stop_when_orphaned, args=(fd, grace), name="emailq-lifeline", daemon=True).start()


def wait_for_parent(fd: int) -> None:
    """Block until the parent holding the write end of `fd` is gone."""
    while os.read(fd, 1):
        pass  # the parent never writes; anything read is ignored


def _stop_when_orphaned(fd: int, grace: float) -> None:
    try:
        wait_for_parent(fd)
    except OSError as error:
        print(f"emailq: cannot watch the parent process (fd {fd}: {error.strerror}); not tied to it", file=sys.stderr)
        return
    print("emailq: the process that started this one is gone; stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    print(f"emailq: not stopped within {grace:g}s of SIGTERM; killing", file=sys.stderr, flush=True)
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)  # and whatever it started
    os.kill(os.getpid(), signal.SIGKILL)
