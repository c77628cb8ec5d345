"""A busy ingest logs at a rate it can afford: one line per email up to LINES_PER_SECOND a
second, then one line a second saying how many more were enqueued."""

from __future__ import annotations

import asyncio
import logging

from emailq.ingest.accept import LINES_PER_SECOND, SampledLog


def test_a_burst_logs_each_email_up_to_the_cap_then_one_summary(caplog):
    async def burst() -> None:
        sampled = SampledLog()
        for n in range(LINES_PER_SECOND + 100):
            sampled.enqueued(f"id-{n}")
        await asyncio.sleep(1.2)  # the summary comes a second after the first unlogged email

    with caplog.at_level(logging.INFO, logger="emailq.ingest"):
        asyncio.run(burst())
    lines = [r.getMessage() for r in caplog.records if r.name == "emailq.ingest"]
    each = [line for line in lines if line.startswith("enqueued id-")]
    assert len(each) in (LINES_PER_SECOND, LINES_PER_SECOND * 2)  # the burst may straddle a second
    summaries = [line for line in lines if "more emails" in line]
    assert len(summaries) == 1 and f"enqueued {LINES_PER_SECOND + 100 - len(each)} more emails" in summaries[0]


def test_a_quiet_ingest_logs_every_email(caplog):
    async def trickle() -> None:
        sampled = SampledLog()
        for n in range(5):
            sampled.enqueued(f"id-{n}")

    with caplog.at_level(logging.INFO, logger="emailq.ingest"):
        asyncio.run(trickle())
    assert [r.getMessage() for r in caplog.records] == [f"enqueued id-{n}" for n in range(5)]
