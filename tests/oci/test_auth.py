"""Bearer auth against a docker-registry with ``auth: token``: the oci_token sent directly, the
standard token challenge (realm/service/scope) answered with our credential, and refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from attrs import frozen

from runner_agent.oci.cache import ImageCache
from runner_agent.oci.errors import RegistryAuthError
from runner_agent.oci.fetch import prepare_image
from runner_agent.oci.source import RegistrySource
from tests.support.images import push_busybox_sync
from tests.support.registry import RegistryServer, TokenServer, run_registry, run_token_server

CREDENTIAL = "runner-oci-credential"


@frozen
class AuthSetup:
    registry: RegistryServer
    tokens: TokenServer
    repository: str
    digest: str


@pytest.fixture(scope="module")
def auth_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSetup]:
    work = tmp_path_factory.mktemp("authreg")
    with run_token_server(work, required_credential=CREDENTIAL) as tokens, run_registry(
        work, auth=tokens.auth
    ) as registry:
        repo = "private/busybox"
        image = push_busybox_sync(registry.url, repo, work, token=CREDENTIAL)
        yield AuthSetup(registry, tokens, repo, image.digest)


@pytest.fixture
def tokens(auth_setup: AuthSetup) -> TokenServer:
    auth_setup.tokens.requests.clear()
    return auth_setup.tokens


async def test_challenge_answered_with_credential(
    auth_setup: AuthSetup, tokens: TokenServer, tmp_path: Path
) -> None:
    src = RegistrySource(auth_setup.registry.url, auth_setup.repository, auth_setup.digest, CREDENTIAL)
    with trio.fail_after(30):
        image = await prepare_image(src, ImageCache(tmp_path / "c"))
    assert (image.rootfs / "bin/busybox").is_file()
    assert tokens.requests, "the token endpoint was never asked"
    first = tokens.requests[0]
    assert first["authorization"] == f"Bearer {CREDENTIAL}"
    assert first["query"]["service"] == "test-registry"
    assert first["query"]["scope"] == f"repository:{auth_setup.repository}:pull"


async def test_registry_token_sent_directly(auth_setup: AuthSetup, tokens: TokenServer, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with httpx.AsyncClient() as client:
            resp = await client.get(
                tokens.url + "/token",
                params={"service": "test-registry", "scope": f"repository:{auth_setup.repository}:pull"},
                headers={"Authorization": f"Bearer {CREDENTIAL}"},
            )
        registry_token = resp.json()["token"]
        tokens.requests.clear()
        src = RegistrySource(auth_setup.registry.url, auth_setup.repository, auth_setup.digest, registry_token)
        image = await prepare_image(src, ImageCache(tmp_path / "c"))
    assert image.manifest_digest == auth_setup.digest
    assert tokens.requests == []  # the bearer token was accepted without a challenge


async def test_wrong_credential(auth_setup: AuthSetup, tokens: TokenServer, tmp_path: Path) -> None:
    src = RegistrySource(auth_setup.registry.url, auth_setup.repository, auth_setup.digest, "wrong")
    with trio.fail_after(30), pytest.raises(RegistryAuthError, match=r"refused the token request \(HTTP 401\)"):
        await prepare_image(src, ImageCache(tmp_path / "c"))


async def test_anonymous_refused(auth_setup: AuthSetup, tokens: TokenServer, tmp_path: Path) -> None:
    src = RegistrySource(auth_setup.registry.url, auth_setup.repository, auth_setup.digest)
    with trio.fail_after(30), pytest.raises(RegistryAuthError, match="token endpoint"):
        await prepare_image(src, ImageCache(tmp_path / "c"))
    assert tokens.requests[0]["authorization"] is None


async def test_token_without_access(auth_setup: AuthSetup, tokens: TokenServer, tmp_path: Path) -> None:
    tokens.grant_access = False
    try:
        src = RegistrySource(auth_setup.registry.url, auth_setup.repository, auth_setup.digest, CREDENTIAL)
        with trio.fail_after(30), pytest.raises(
            RegistryAuthError, match=r"registry refused access to manifest .* \(HTTP 401, token rejected\)"
        ):
            await prepare_image(src, ImageCache(tmp_path / "c"))
    finally:
        tokens.grant_access = True
    assert len(tokens.requests) == 1  # one challenge answered, then a clear failure (no loop)
