"""`emailq status` asks each worker where its emails go: the remote-control command
`emailq_endpoints`, answered from the worker's own breakers (they live in its memory, one
set per worker, so only the worker can say). Never a URL's secret or a header: only the
endpoints' names and their breakers' states.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from emailq.worker import runtime

COMMAND = "emailq_endpoints"


@inspect_command(name=COMMAND)
def emailq_endpoints(state: Any, **_: Any) -> dict[str, str]:
    """Each endpoint's breaker (`closed` or `open`) and where new emails go."""
    failover = runtime.get().failover
    if failover is None:
        breaker = runtime.get().breaker
        return {"primary": "open" if breaker.is_open else "closed", "sending_to": "nowhere (probing)" if breaker.is_open else "primary"}
    return failover.state()
