"""A real ``docker-registry`` process on 127.0.0.1 for tests, optionally behind bearer-token auth
served by a tiny token server that signs ES256 JWTs with a key generated per test run."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from attrs import define, field, frozen

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@frozen
class TokenAuth:
    """What the registry needs to trust our token server."""

    realm: str
    service: str
    issuer: str
    cert_path: Path


@frozen
class RegistryServer:
    """A running registry: ``url`` is ``http://127.0.0.1:<port>``, ``storage`` its root directory."""

    url: str
    storage: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (Docker Distribution filesystem layout)."""
        alg, hexd = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / alg / hexd[:2] / hexd / "data"


def _config_yaml(storage: Path, port: int, auth: TokenAuth | None) -> str:
    lines = [
        "version: 0.1",
        "log: {level: info}",
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}",
        f"http: {{addr: 127.0.0.1:{port}}}",
    ]
    if auth is not None:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {auth.realm}",
            f"    service: {auth.service}",
            f"    issuer: {auth.issuer}",
            f"    rootcertbundle: {auth.cert_path}",
        ]
    return "\n".join(lines) + "\n"


@contextmanager
def run_registry(workdir: Path, auth: TokenAuth | None = None, timeout: float = 20.0) -> Iterator[RegistryServer]:
    """Start ``docker-registry serve`` on a free loopback port; stop it on exit.

    Readiness is the registry's own "listening on" log line, read from its stderr by a thread.
    """
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(_config_yaml(storage, port, auth))
    log_path = workdir / "registry.log"
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        with log_path.open("ab") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if b"listening on" in line:
                    ready.set()
        ready.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout) or proc.poll() is not None:
            raise RuntimeError(f"docker-registry did not start; log: {log_path.read_text()[-2000:]}")
        yield RegistryServer(f"http://127.0.0.1:{port}", storage, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        thread.join(5)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: Any) -> str:
    """The key id format Docker Distribution uses for ``kid`` (libtrust): base32 of the first
    240 bits of SHA-256 over the DER SubjectPublicKeyInfo, in colon-separated groups of four."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


@define
class TokenServer:
    """Issues registry bearer tokens for whatever scope is asked, if the caller presents
    ``required_credential`` (as ``Bearer``) when one is set. Records every request."""

    url: str
    issuer: str
    service: str
    cert_path: Path
    required_credential: str | None = None
    grant_access: bool = True  # False: issue valid tokens that grant nothing
    requests: list[dict[str, Any]] = field(factory=list)

    @property
    def auth(self) -> TokenAuth:
        return TokenAuth(self.url + "/token", self.service, self.issuer, self.cert_path)


@contextmanager
def run_token_server(workdir: Path, required_credential: str | None = None) -> Iterator[TokenServer]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runner-agent test token issuer")])
    now = time.time()
    import datetime as dt

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 3600, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 86400, dt.UTC))
        .sign(key, hashes.SHA256())
    )
    cert_path = workdir / "token-cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kid = libtrust_key_id(key.public_key())
    state: dict[str, TokenServer] = {}

    def sign(claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "ES256", "kid": kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server = state["server"]
            parsed = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            auth = self.headers.get("Authorization")
            server.requests.append({"path": parsed.path, "query": query, "authorization": auth})
            if server.required_credential is not None and auth != f"Bearer {server.required_credential}":
                self.send_response(401)
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", "").split() if server.grant_access else []:
                kind, _, rest = scope.partition(":")
                repo, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
            t = int(time.time())
            token = sign(
                {
                    "iss": server.issuer,
                    "sub": "runner",
                    "aud": server.service,
                    "exp": t + 600,
                    "nbf": t - 60,
                    "iat": t,
                    "jti": uuid.uuid4().hex,
                    "access": access,
                }
            )
            body = json.dumps({"token": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    server = TokenServer(
        f"http://127.0.0.1:{port}", "runner-agent-test", "test-registry", cert_path, required_credential
    )
    state["server"] = server
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


__all__ = ["RegistryServer", "TokenServer", "free_port", "os", "run_registry", "run_token_server"]
