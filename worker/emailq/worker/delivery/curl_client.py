"""The default HTTP client: libcurl (pycurl), shared by many threads.

A worker is one Python process whose deliveries share one interpreter lock, so the CPU a
POST spends in Python caps its rate. Measured here at 64 threads against a local
endpoint: httpx's own pool about 3 ms of CPU per POST (encode/httpx#3215), urllib3's
about 0.3 ms, libcurl under 0.1 ms — it builds, sends and parses the request in C with
the lock released. For the same reason no Python callback runs per header: libcurl reads
Retry-After itself.

Each thread keeps its own curl handle, and with it a keep-alive connection. It keeps the
promises of `emailq.worker.delivery.http_client`: redirects are never followed; TLS is verified
(certifi's bundle, or `SSL_CERT_FILE` when set, as httpx does); proxies from the
environment are not used; one bound for the whole attempt; a response body is kept up to
`max_body_bytes` and the rest is not read. libcurl's error codes become emailq's errors
in `_mapped`, and only there.
"""

from __future__ import annotations

import os
import threading

import certifi
import pycurl

from emailq.worker.delivery.errors import (
    ConnectError,
    ConnectTimeout,
    DeliveryError,
    HttpClientError,
    ReadTimeout,
    RemoteProtocolError,
)
from emailq.worker.delivery.http_client import Answer, refuse_unsendable

_CONNECT_FAILED = frozenset({pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST})
# The endpoint's certificate or handshake: it may be fixed while the email waits. Local
# TLS faults (our CA file unreadable, a cipher we asked for) are not here: unknown codes.
_TLS_FAILED = frozenset({pycurl.E_SSL_CONNECT_ERROR, pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_ISSUER_ERROR})
_BROKEN_OFF = frozenset(
    {
        # With an http(s) URL (`refuse_unsendable` allows no other) libcurl reports an answer
        # that is not HTTP/1.x ("Received HTTP/0.9 when not allowed") as an unsupported protocol.
        pycurl.E_UNSUPPORTED_PROTOCOL,
        pycurl.E_FTP_WEIRD_SERVER_REPLY,  # CURLE_WEIRD_SERVER_REPLY: pycurl names it after FTP
        pycurl.E_PARTIAL_FILE,  # closed before the body's announced end
        pycurl.E_GOT_NOTHING,  # closed without a byte of answer
        pycurl.E_SEND_ERROR,  # reset while sending
        pycurl.E_RECV_ERROR,  # reset while receiving
    }
)


class _Capped:
    """Collects a body up to a limit; past it, tells curl to stop reading."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.cut = False

    def write(self, chunk: bytes) -> int | None:
        room = self.limit - self.size
        if len(chunk) <= room:
            self.chunks.append(chunk)
            self.size += len(chunk)
            return None
        self.chunks.append(chunk[:room])
        self.size = self.limit
        self.cut = True
        return 0  # anything but len(chunk) makes curl abort the transfer


class CurlClient:
    """An `HttpClient` on libcurl: one handle (and keep-alive connection) per thread."""

    def __init__(self, max_body_bytes: int):
        self._max_body_bytes = max_body_bytes
        self._cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        refuse_unsendable(url, headers)
        curl = self._handle()
        received = _Capped(self._max_body_bytes)
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.POSTFIELDS, body)
        curl.setopt(pycurl.HTTPHEADER, [*headers, "Expect:"])  # no 100-continue round trip
        curl.setopt(pycurl.WRITEFUNCTION, received.write)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(connect * 1000))
        # One bound for the whole attempt, connect included (curl has no sub-second idle
        # timeout): an answer trickled byte by byte cannot stretch it.
        curl.setopt(pycurl.TIMEOUT_MS, int(timeout * 1000))
        try:
            curl.perform()
        except pycurl.error as exc:
            code, message = exc.args
            if not (code == pycurl.E_WRITE_ERROR and received.cut):
                raise _mapped(curl, code, message, tls=url.startswith("https:")) from exc
        finally:
            curl.setopt(pycurl.WRITEFUNCTION, _discard)
        # libcurl parses Retry-After itself (seconds or an HTTP date); 0 means none or now.
        retry_after = curl.getinfo(pycurl.RETRY_AFTER)
        return Answer(curl.getinfo(pycurl.RESPONSE_CODE), retry_after or None, b"".join(received.chunks))

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for curl in handles:
            curl.close()

    def _handle(self) -> pycurl.Curl:
        curl = getattr(self._local, "curl", None)
        if curl is None:
            curl = self._local.curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)  # curl's timeouts must not use signals in threads
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            curl.setopt(pycurl.PROXY, "")
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
            curl.setopt(pycurl.CAINFO, self._cafile)
            curl.setopt(pycurl.SSL_VERIFYPEER, 1)
            curl.setopt(pycurl.SSL_VERIFYHOST, 2)
            with self._lock:
                self._handles.append(curl)
        return curl


def _discard(_: bytes) -> None:
    # Between requests the handle must not keep the last request's buffer alive.
    return None


def _mapped(curl: pycurl.Curl, code: int, message: str, tls: bool) -> DeliveryError:
    """libcurl's error `code` as emailq's error: the endpoint's doing as a NetworkError
    (retried), anything else, including codes not named here, as HttpClientError."""
    if code in _CONNECT_FAILED:
        return ConnectError(message)
    if code in _TLS_FAILED:
        return ConnectError(f"TLS: {message}")
    if code == pycurl.E_OPERATION_TIMEDOUT:
        connected = curl.getinfo(pycurl.APPCONNECT_TIME if tls else pycurl.CONNECT_TIME) > 0
        return ReadTimeout(message) if connected else ConnectTimeout(message)
    if code in _BROKEN_OFF:
        return RemoteProtocolError(message)
    return HttpClientError(f"libcurl error {code}: {message}")
