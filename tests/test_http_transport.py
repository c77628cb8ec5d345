"""The libcurl transport under the worker's POSTs, against a real endpoint on loopback."""

from __future__ import annotations

import httpx
import pytest

from conftest import Reply
from worker.http_transport import CurlTransport

TIMEOUTS = {"timeout": {"connect": 1.0, "read": 2.0}}


def post(transport: CurlTransport, url: str, headers: dict[str, str]) -> httpx.Response:
    request = httpx.Request("POST", url, headers=headers, content=b'{"to":"a@b.co"}', extensions=TIMEOUTS)
    return transport.handle_request(request)


def test_keeps_one_connection_alive_across_requests(endpoint):
    transport = CurlTransport(max_body_bytes=1024)
    endpoint.behave = lambda headers, body: Reply(503, body=b"busy", headers={"Retry-After": "7"})
    responses = [post(transport, endpoint.url, {"Idempotency-Key": str(n)}) for n in range(3)]
    transport.close()

    assert [(r.status_code, r.headers["retry-after"], r.content) for r in responses] == [(503, "7", b"busy")] * 3
    assert [r.key for r in endpoint.received] == ["0", "1", "2"]
    assert len({r.peer for r in endpoint.received}) == 1


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(endpoint):
    transport = CurlTransport(max_body_bytes=1024)
    with pytest.raises(httpx.LocalProtocolError):
        post(transport, endpoint.url, {"Authorization": "Bearer x\r\nX-Injected: 1"})
    assert endpoint.received == []


def test_a_closed_port_is_a_connect_error(endpoint):
    endpoint.go_down()
    with pytest.raises(httpx.ConnectError):
        post(CurlTransport(max_body_bytes=1024), endpoint.url, {})
