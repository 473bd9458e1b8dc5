"""wss:// with real TLS on loopback: verified by default, a private CA via --ca-bundle."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import WebSocketRequest, serve_websocket

from runner_agent.config import load_config
from runner_agent.connection import ConnectFailure, build_endpoint, open_channel

KEY = "bencher_runner_" + "t" * 30


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runner-agent test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("trusted", [True, False])
async def test_wss_verified_against_the_ca_bundle(tmp_path: Path, trusted: bool) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        seen.append(dict(request.headers)[b"authorization"].decode())
        await ws.send_message("hello")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, server_ctx)
            flags: dict[str, object] = {"runner": "r1", "host": f"https://127.0.0.1:{server.port}",
                                        "connect_timeout": 1}
            if trusted:
                flags["ca_bundle"] = cert
            endpoint = build_endpoint(load_config(flags, {}, None, default_config_file=None))
            assert endpoint.url.startswith("wss://")
            if trusted:
                async with open_channel(endpoint, KEY) as ws:
                    assert await ws.get_message() == "hello"
            else:
                with pytest.raises(ConnectFailure) as info:
                    async with open_channel(endpoint, KEY):
                        pass
                assert info.value.kind == "tls"
                assert "certificate" in str(info.value) and "--ca-bundle" in str(info.value)
            nursery.cancel_scope.cancel()
    assert seen == ([f"Bearer {KEY}"] if trusted else [])
