"""The `emailq` console script, present on every install, the bare library's included.

It imports nothing beyond the standard library until it knows the subcommand, so that a
web app that installed `emailq` alone, and then types `emailq worker`, reads one line
naming the extra to install instead of a traceback about a missing module. Everything
else is the CLI of `emailq.worker.commands.cli`.
"""

from __future__ import annotations

import importlib.util
import sys

# What each subcommand imports that the bare library lacks, and the extra that brings it.
# send, status, dlq and trace come with every extra but the library's own; `worker`
# is the one to name.
NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "worker": ("worker", ("celery", "kombu", "pycurl", "httpx", "tenacity", "click", "prometheus_client")),
    "serve": ("ingest", ("fastapi", "uvicorn", "click", "prometheus_client")),
    "flower": ("flower", ("flower", "celery", "kombu", "click", "prometheus_client")),
    "dev": ("server", ("celery", "kombu", "pycurl", "httpx", "tenacity", "fastapi", "uvicorn", "flower", "click", "prometheus_client")),
    "status": ("worker", ("celery", "kombu", "click", "prometheus_client")),
}
OPERATOR = ("worker", ("click", "prometheus_client"))  # send, dlq, trace, --help


def missing_extra(argv: list[str]) -> str | None:
    """The one line to print when `argv`'s subcommand needs an extra that is not installed."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    extra, modules = NEEDS.get(command or "", OPERATOR)
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    what = f"emailq {command}" if command else "emailq"
    return f"{what}: needs the '{extra}' extra (missing: {', '.join(absent)}): pip install 'emailq[{extra}]'"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    problem = missing_extra(args)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    from emailq.worker.commands.cli import main as run

    run(args)
