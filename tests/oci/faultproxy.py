"""A small HTTP front for the real registry that injects faults: 5xx answers, truncated blob
bodies, blob or manifest bodies stalled halfway until released, and replaced manifest bodies.
Everything else is forwarded unchanged."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from attrs import define, field


@define
class Faults:
    fail_times: int = 0
    fail_status: int = 503
    truncate_blobs: bool = False
    truncate_times: int | None = None  # with truncate_blobs: only this many times
    stall_blobs: bool = False
    stall_manifests: bool = False
    manifest_body: bytes | None = None
    manifest_type: str | None = None
    stalled: threading.Event = field(factory=threading.Event)
    release: threading.Event = field(factory=threading.Event)
    requests: list[str] = field(factory=list)
    lock: threading.Lock = field(factory=threading.Lock)


@define
class FaultProxy:
    url: str
    faults: Faults


@contextmanager
def run_fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    target = urlparse(upstream)
    faults = Faults()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            return resp.status, resp.getheaders(), body

        def do_GET(self) -> None:
            with faults.lock:
                faults.requests.append(self.path)
                failing = faults.fail_times > 0
                if failing:
                    faults.fail_times -= 1
            if failing:
                self.send_response(faults.fail_status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, headers, body = self._forward()
            is_blob = "/blobs/" in self.path and status == 200
            if "/manifests/" in self.path and faults.manifest_body is not None:
                status, body = 200, faults.manifest_body
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
                headers.append(("Content-Type", faults.manifest_type or "text/plain"))
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("content-length", "connection", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if is_blob and len(body) > 1 and faults.truncate_blobs:
                with faults.lock:
                    cut = faults.truncate_times is None or faults.truncate_times > 0
                    if cut and faults.truncate_times is not None:
                        faults.truncate_times -= 1
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    return  # the connection closes with the body incomplete
            is_manifest = "/manifests/" in self.path and status == 200
            stall = (is_blob and faults.stall_blobs) or (is_manifest and faults.stall_manifests)
            if len(body) > 1 and stall:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                faults.stalled.set()
                faults.release.wait(30)
                body = body[len(body) // 2 :]  # then finish the body (if the client is still there)
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield FaultProxy(f"http://127.0.0.1:{httpd.server_address[1]}", faults)
    finally:
        faults.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
