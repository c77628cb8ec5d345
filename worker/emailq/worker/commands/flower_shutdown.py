"""`emailq flower` stops on SIGTERM (and Ctrl-C) within seconds, also while Redis is down.

Flower's SIGTERM handler (`flower.command.sigterm_handler`) raises SystemExit, and the
interpreter then joins the threads of asyncio's default executor before exiting. Flower
runs its periodic `enable_events` and its worker inspections there, and with Redis down
they are reconnecting to it: for ever, since emailq's Celery app retries the broker
without limit (`broker_connection_max_retries=None`, so that a Redis restart never stops
a worker). Flower logged "shutting down" and ran on, reconnecting every second. Here the
same handler also starts a timer that ends the process `STOP_SECONDS` later, whatever it
still waits for; Flower's own clean exit (saving its state) comes first when it can.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger("emailq.flower")

# Flower saves its state (`--persistent`) in well under this; past it, it is waiting on Redis.
STOP_SECONDS = 3.0


def stop_within_seconds() -> None:
    """Make SIGTERM and SIGINT stop Flower, by force `STOP_SECONDS` after the signal."""
    try:
        import flower.command
    except ImportError:
        return
    # Flower installs its SIGTERM handler by this name when it starts; SIGINT it leaves to
    # Python (KeyboardInterrupt, with the same hang), so it is set here.
    if callable(getattr(flower.command, "sigterm_handler", None)):
        flower.command.sigterm_handler = _stop
    else:  # a Flower whose internals moved: SIGINT still stops it in time
        log.warning("this Flower version does not expose its SIGTERM handler; SIGTERM may wait on Redis")
    signal.signal(signal.SIGINT, _stop)


def _stop(signum: int, frame: FrameType | None) -> None:
    if not any(thread.name == "emailq-stop" for thread in threading.enumerate()):
        log.info("%s: stopping (within %gs)", signal.Signals(signum).name, STOP_SECONDS)
        timer = threading.Timer(STOP_SECONDS, _exit_now)
        # A daemon thread: it runs on while the interpreter joins the stuck executor threads.
        timer.name, timer.daemon = "emailq-stop", True
        timer.start()
    sys.exit(0)


def _exit_now() -> None:
    log.warning("not stopped within %gs (waiting on Redis?): exiting now", STOP_SECONDS)
    logging.shutdown()
    os._exit(0)
