"""An httpx transport on urllib3's connection pool, for many threads at once.

httpx's own pool (httpcore) slows down as threads contend for it (encode/httpx#3215):
measured here, from about 0.4 ms of CPU per POST with one thread to 1.8 ms with 64. With
this transport the worker keeps httpx's client, timeouts and exceptions, while the
connections come from urllib3's thread-safe pool. Redirects are never followed; TLS is
verified (certifi's bundle, or `SSL_CERT_FILE` when set, as httpx does).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator

import certifi
import httpx
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

_CHUNK = 16384


class _Body(httpx.SyncByteStream):
    def __init__(self, response: urllib3.BaseHTTPResponse):
        self._response = response
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._response.stream(_CHUNK, decode_content=False)
        except ReadTimeoutError as error:
            raise httpx.ReadTimeout(str(error)) from None
        except (ProtocolError, urllib3.exceptions.HTTPError) as error:
            raise httpx.RemoteProtocolError(str(error)) from None
        self._complete = True

    def close(self) -> None:
        # A body read to its end gives the connection back to the pool; a body cut short
        # (an endless or huge one) leaves it unusable, so it is closed.
        if not self._complete:
            self._response.close()
        self._response.release_conn()


class Urllib3Transport(httpx.BaseTransport):
    def __init__(self, max_connections: int):
        cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
        self._pool = urllib3.PoolManager(
            maxsize=max_connections,
            block=False,
            retries=False,
            ssl_context=ssl.create_default_context(cafile=cafile),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        try:
            response = self._pool.urlopen(
                request.method,
                str(request.url),
                body=request.read(),
                headers=dict(request.headers),
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=urllib3.Timeout(connect=timeouts.get("connect"), read=timeouts.get("read")),
            )
        # NewConnectionError subclasses ConnectTimeoutError in urllib3: test it first.
        except (NewConnectionError, SSLError) as error:
            raise httpx.ConnectError(str(error)) from None
        except ConnectTimeoutError as error:
            raise httpx.ConnectTimeout(str(error)) from None
        except ReadTimeoutError as error:
            raise httpx.ReadTimeout(str(error)) from None
        except (ProtocolError, urllib3.exceptions.HTTPError) as error:
            raise httpx.RemoteProtocolError(str(error)) from None
        return httpx.Response(
            status_code=response.status,
            headers=list(response.headers.items()),
            stream=_Body(response),
        )

    def close(self) -> None:
        self._pool.clear()
