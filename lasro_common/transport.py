"""A fast synchronous transport for httpx on large bodies.

httpcore + h11 parse a multi-MiB response in 64 KiB slices and re-join them; `http.client`
reads a Content-Length body straight into one buffer. Measured by bench/transport.py: the
client side of a 2 MiB round trip costs about a quarter of the CPU time. The httpx API (timeouts,
headers, Response) stays the same; only the bytes move differently.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading

import httpx

MAX_BYTES = "lasro_max_bytes"  # request extension: the most reply bytes to read (untrusted peers)


class ReplyTooLarge(httpx.HTTPError):
    """A reply over the request's MAX_BYTES extension; the rest of it is not read."""


class FastTransport(httpx.BaseTransport):
    """Keep-alive `http.client` connections, one per (thread, scheme, host, port)."""

    def __init__(self, verify: bool | ssl.SSLContext = True):
        self._local = threading.local()
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else (
            ssl.create_default_context() if verify else ssl._create_unverified_context())

    def _conn(self, url: httpx.URL, timeout: float | None) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("pool", {})
        key = (url.scheme, url.host, url.port)
        conn = pool.get(key)
        if conn is None:
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(url.host, url.port or 443, timeout=timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(url.host, url.port or 80, timeout=timeout)
            pool[key] = conn
        conn.timeout = timeout
        return conn

    def _drop(self, url: httpx.URL) -> None:
        conn = self._local.__dict__.get("pool", {}).pop((url.scheme, url.host, url.port), None)
        if conn is not None:
            conn.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout", {})
        timeout = max((v for v in (t.get("connect"), t.get("read"), t.get("write")) if v is not None), default=None)
        body = request.read()
        cap = request.extensions.get(MAX_BYTES)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        target = request.url.raw_path.decode("ascii")
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile is retried once
            conn = self._conn(request.url, timeout)
            fresh = conn.sock is None
            try:
                if fresh:
                    conn.connect()
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                # The server may answer early (401, 413, ...) and close while the body is still going
                # out; its answer then waits in our receive buffer: read it. If there is none,
                # getresponse raises and the connection errors below apply as before.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    conn.endheaders(body or None)  # two sends, headers then body: no copy of the body
                resp = conn.getresponse()
                content = resp.read() if cap is None else self._read_capped(resp, cap, request)
            except (ConnectionRefusedError, socket.gaierror) as e:
                self._drop(request.url)
                raise httpx.ConnectError(str(e), request=request) from e
            except TimeoutError as e:
                self._drop(request.url)
                raise httpx.ReadTimeout(str(e), request=request) from e
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._drop(request.url)
                if attempt == 0 and not fresh:
                    continue
                raise httpx.RemoteProtocolError(str(e), request=request) from e
            except OSError as e:
                self._drop(request.url)
                raise httpx.ConnectError(str(e), request=request) from e
            if resp.will_close:
                self._drop(request.url)
            return httpx.Response(resp.status, headers=resp.getheaders(), content=content,
                                  extensions={"http_version": b"HTTP/1.1"}, request=request)
        raise AssertionError("unreachable")

    def _read_capped(self, resp: http.client.HTTPResponse, cap: int, request: httpx.Request) -> bytes:
        """At most `cap` bytes of the body, or ReplyTooLarge (and the connection dropped unread)."""
        encoding = resp.getheader("content-encoding", "identity").strip().lower()
        if encoding != "identity":  # we send no Accept-Encoding: a compressed reply could inflate past the cap
            self._drop(request.url)
            raise ReplyTooLarge(f"{request.url}: the reply is {encoding}-encoded, which was not asked for "
                                f"(a reply with a size limit of {cap:,} bytes must come uncompressed)")
        declared = resp.getheader("content-length", "")
        over = declared.isdigit() and int(declared) > cap
        content = b"" if over else resp.read(cap + 1)  # +1: tells "exactly cap" from "more"
        if over or len(content) > cap:
            self._drop(request.url)
            size = f"declares {int(declared):,} bytes," if over else "is"
            raise ReplyTooLarge(f"{request.url}: the reply {size} over the limit of {cap:,} bytes")
        return content

    def close(self) -> None:
        for conn in self._local.__dict__.get("pool", {}).values():
            conn.close()
