"""A local HTTP file server on 127.0.0.1 for the download tests, with injectable faults.

It answers ``GET`` with ``Range: bytes=N-`` (206 + ``Content-Range``) and honours ``If-Range``
against the ETag (the content's SHA-256 prefix), as real servers do; it can cut a response
short (connection closed after N body bytes, with the full ``Content-Length`` announced or, with
``send_length = False``, none), ignore ranges, ignore ``If-Range`` (``if_range_honoured =
False``: a range of whatever it serves now), or serve new content between requests. Every
request is logged.

Use the ``http_server`` fixture (import it into a test module) or ``LocalServer`` directly.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Request:
    """One request as the server saw it, and how many body bytes it sent back."""

    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0


@dataclass
class _File:
    content: bytes
    drops: list[int] = field(default_factory=list)  # cut the next responses after N bytes

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.content).hexdigest()[:16] + '"'


class LocalServer:
    """Serves in-memory files at ``self.url + path``; see the module docstring."""

    def __init__(self) -> None:
        self.files: dict[str, _File] = {}
        self.requests: list[Request] = []
        self.ranges_supported = True
        self.if_range_honoured = True
        self.send_length = True
        self.delay_s = 0.0  # pause before each body (to make concurrent callers overlap)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def serve(self, path: str, content: bytes) -> str:
        """Publishes (or replaces) ``content`` at ``path``; returns its URL."""
        with self._lock:
            self.files[path] = _File(content)
        return self.url + path

    def drop_next(self, path: str, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` responses for ``path`` stop after ``after_bytes`` body bytes."""
        with self._lock:
            self.files[path].drops.extend([after_bytes] * times)

    def hits(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                request = Request(self.path, dict(self.headers.items()))
                server.requests.append(request)
                with server._lock:
                    file = server.files.get(self.path)
                    drop = file.drops.pop(0) if file and file.drops else None
                if file is None:
                    request.status = 404
                    self.send_error(404)
                    return
                content, start = file.content, 0
                wanted = self.headers.get("Range", "")
                if_range = self.headers.get("If-Range")
                if (server.ranges_supported and wanted.startswith("bytes=")
                        and (if_range in (None, file.etag) or not server.if_range_honoured)):
                    start = int(wanted[len("bytes="):].split("-")[0])
                    if start >= len(content):
                        request.status = 416
                        self.send_error(416)
                        return
                request.status = 206 if start else 200
                self.send_response(request.status)
                self.send_header("ETag", file.etag)
                if server.send_length:
                    self.send_header("Content-Length", str(len(content) - start))
                if start:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.end_headers()
                time.sleep(server.delay_s)
                body = content[start:] if drop is None else content[start:start + drop]
                self.wfile.write(body)
                request.body_bytes = len(body)
                if drop is not None:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        return Handler


def serve_zoo_model(server: LocalServer, name: str):
    """Serves a randomly initialised zoo model in the original's layout
    (``/<name>/{encoder,decoder}_epoch_<N>.pth``); returns it (eval mode) for comparisons."""
    import torch

    from mit_semseg.models.zoo import build_model, get_model

    source = build_model(name).eval()
    for part, file_name in zip(("encoder", "decoder"), get_model(name).file_names()):
        buffer = io.BytesIO()
        torch.save(getattr(source, part).state_dict(), buffer)
        server.serve(f"/{name}/{file_name}", buffer.getvalue())
    return source


def unused_url(path: str = "/file") -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def http_server(monkeypatch):
    """A running :class:`LocalServer`; proxies are bypassed for 127.0.0.1."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MIT_SEMSEG_SHA256", raising=False)
    server = LocalServer()
    yield server
    server.close()
