"""The libcurl client under the worker's POSTs, against a real endpoint on loopback."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest

from conftest import Reply
from emailq.worker.http_transport import CurlTransport


def post(transport: CurlTransport, url: str, headers: list[str]):
    return transport.post(url, headers, b'{"to":"a@b.co"}', connect=1.0, timeout=2.0)


def test_keeps_one_connection_alive_across_requests(endpoint):
    transport = CurlTransport(max_body_bytes=1024)
    endpoint.behave = lambda headers, body: Reply(503, body=b"busy", headers={"Retry-After": "7"})
    answers = [post(transport, endpoint.url, [f"Idempotency-Key: {n}"]) for n in range(3)]
    transport.close()

    assert [(a.status, a.retry_after, a.body) for a in answers] == [(503, 7, b"busy")] * 3
    assert [r.key for r in endpoint.received] == ["0", "1", "2"]
    assert len({r.peer for r in endpoint.received}) == 1


def test_retry_after_as_an_http_date_is_read_as_seconds_from_now(endpoint):
    endpoint.behave = lambda headers, body: Reply(429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    answer = post(CurlTransport(max_body_bytes=1024), endpoint.url, [])
    assert answer.status == 429
    assert 28 <= answer.retry_after <= 31


def test_no_retry_after_header_means_none(endpoint):
    endpoint.behave = lambda headers, body: Reply(500)
    assert post(CurlTransport(max_body_bytes=1024), endpoint.url, []).retry_after is None


def test_a_body_longer_than_the_cap_is_cut_not_read_to_the_end(endpoint):
    endpoint.behave = lambda headers, body: Reply(400, endless=True)
    answer = post(CurlTransport(max_body_bytes=2048), endpoint.url, [])
    assert (answer.status, len(answer.body)) == (400, 2048)


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(endpoint):
    with pytest.raises(httpx.LocalProtocolError):
        post(CurlTransport(max_body_bytes=1024), endpoint.url, ["Authorization: Bearer x\r\nX-Injected: 1"])
    assert endpoint.received == []


def test_a_closed_port_is_a_connect_error(endpoint):
    endpoint.go_down()
    with pytest.raises(httpx.ConnectError):
        post(CurlTransport(max_body_bytes=1024), endpoint.url, [])
