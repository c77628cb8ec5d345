"""How the worker POSTs: libcurl (pycurl), shared by many threads.

A worker is one Python process whose deliveries share one interpreter lock, so the CPU a
POST spends in Python caps its rate. Measured here at 64 threads against a local
endpoint: httpx's own pool about 3 ms of CPU per POST (encode/httpx#3215), urllib3's
about 0.3 ms, libcurl under 0.1 ms — it builds, sends and parses the request in C with
the lock released. For the same reason no Python callback runs per header: libcurl reads
Retry-After itself. Failures are raised as httpx's transport exceptions, the vocabulary
the retry policy speaks.

Each thread keeps its own curl handle, and with it a keep-alive connection. Redirects are
never followed; TLS is verified (certifi's bundle, or `SSL_CERT_FILE` when set, as httpx
does); proxies from the environment are not used; a response body is kept up to
`max_body_bytes` and the rest is not read.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

import certifi
import httpx
import pycurl

_CONNECT_FAILED = {pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY}
_TLS_FAILED = {
    pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PEER_FAILED_VERIFICATION,
    pycurl.E_SSL_CACERT,
    pycurl.E_SSL_CERTPROBLEM,
    pycurl.E_SSL_CIPHER,
    pycurl.E_SSL_ISSUER_ERROR,
}


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


class Answer(NamedTuple):
    status: int
    retry_after: float | None  # seconds, from a Retry-After header (delta or date)
    body: bytes  # at most `max_body_bytes`


class CurlTransport:
    def __init__(self, max_body_bytes: int):
        self._max_body_bytes = max_body_bytes
        self._cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        """One POST; `headers` as `Name: value` lines; errors as httpx's transport
        exceptions."""
        if any("\r" in line or "\n" in line for line in headers):
            raise httpx.LocalProtocolError("a header value holds a line break")
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
        except pycurl.error as error:
            code, message = error.args
            if not (code == pycurl.E_WRITE_ERROR and received.cut):
                raise _translate(curl, code, message, url.startswith("https:")) from None
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


def _translate(curl: pycurl.Curl, code: int, message: str, tls: bool) -> httpx.TransportError:
    if code in _CONNECT_FAILED:
        return httpx.ConnectError(message)
    if code in _TLS_FAILED:
        return httpx.ConnectError(f"TLS: {message}")
    if code == pycurl.E_OPERATION_TIMEDOUT:
        connected = curl.getinfo(pycurl.APPCONNECT_TIME if tls else pycurl.CONNECT_TIME) > 0
        return httpx.ReadTimeout(message) if connected else httpx.ConnectTimeout(message)
    return httpx.RemoteProtocolError(message)
