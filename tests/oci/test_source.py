"""Image references, registry URLs, digests, challenges and platform selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner_agent.errors import ImageError
from runner_agent.oci import mediatypes as mt
from runner_agent.oci.digest import parse_digest
from runner_agent.oci.errors import ManifestError
from runner_agent.oci.manifest import Platform, parse_image_config, parse_index, select_platform
from runner_agent.oci.registry import RetryPolicy, normalize_registry_url, parse_bearer_challenge
from runner_agent.oci.source import LayoutSource, RegistrySource, parse_image_reference

D256 = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128


def test_source_from_bencher_job_config() -> None:
    src = RegistrySource("https://registry.bencher.dev/", "11111111-2222-3333-4444-555555555555", D256, "jwt")
    assert src.url == "https://registry.bencher.dev"
    assert src.describe() == f"registry.bencher.dev/11111111-2222-3333-4444-555555555555@{D256}"
    assert "jwt" not in repr(src)


@pytest.mark.parametrize(
    ("registry", "url"),
    [
        ("https://registry.bencher.dev/", "https://registry.bencher.dev"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("registry.example.com", "https://registry.example.com"),
    ],
)
def test_registry_url(registry: str, url: str) -> None:
    assert normalize_registry_url(registry) == url


@pytest.mark.parametrize("bad", ["", "ftp://host", "https://host/path", "https://"])
def test_bad_registry_url(bad: str) -> None:
    with pytest.raises(ImageError):
        normalize_registry_url(bad)


def test_digests() -> None:
    assert str(parse_digest(D512)) == D512
    for bad in ["sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32, "sha512:" + "a" * 64]:
        with pytest.raises(ImageError, match="invalid digest"):
            parse_digest(bad)
    with pytest.raises(ImageError, match="invalid digest"):
        RegistrySource("https://r", "p", "sha256:xyz")
    with pytest.raises(ImageError, match="invalid repository"):
        RegistrySource("https://r", "Upper/Case", D256)
    with pytest.raises(ImageError, match="invalid digest"):
        LayoutSource(Path("/x"), "sha256:1")


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "reference"),
    [
        (f"127.0.0.1:5000/test/busybox@{D256}", "http://127.0.0.1:5000", "test/busybox", D256),
        (f"localhost/x@{D512}", "http://localhost", "x", D512),
        ("registry.example.com/a/b:v1.2", "https://registry.example.com", "a/b", "v1.2"),
        (f"http://host:8080/p@{D256}", "http://host:8080", "p", D256),
    ],
)
def test_parse_reference(ref: str, registry: str, repository: str, reference: str) -> None:
    src = parse_image_reference(ref, token="t")
    assert (src.registry, src.repository, src.digest, src.token) == (registry, repository, reference, "t")


@pytest.mark.parametrize("bad", ["busybox", "host/repo", "ftp://host/r@" + D256, "host:5000/repo"])
def test_bad_reference(bad: str) -> None:
    with pytest.raises(ImageError):
        parse_image_reference(bad)


def test_bearer_challenge() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry",scope="repository:p:pull"'
    assert parse_bearer_challenge(header) == {
        "realm": "https://auth.example/token",
        "service": "registry",
        "scope": "repository:p:pull",
    }
    assert parse_bearer_challenge('Basic realm="x"') is None


def test_retry_backoff_is_bounded() -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.25, max_delay=1.0)
    assert [policy.delay(i) for i in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def _entry(arch: str, variant: str | None = None) -> dict[str, object]:
    plat: dict[str, str] = {"os": "linux", "architecture": arch}
    if variant:
        plat["variant"] = variant
    return {"mediaType": mt.DOCKER_MANIFEST, "digest": "sha256:" + arch[0] * 64, "size": 10, "platform": plat}


def test_select_platform_from_docker_list() -> None:
    index = parse_index({"manifests": [_entry("amd64"), _entry("arm64", "v8")]}, "list")
    assert select_platform(index, Platform("linux", "arm64"), "list").digest.hex == "a" * 64
    assert select_platform(index, Platform("linux", "amd64"), "list").platform == Platform("linux", "amd64")
    with pytest.raises(ManifestError, match=r"no manifest for platform linux/riscv64 \(offers: linux/amd64, linux/arm64\)"):
        select_platform(index, Platform("linux", "riscv64"), "list")


def test_bad_descriptor() -> None:
    with pytest.raises(ManifestError, match="'size' must be a non-negative integer"):
        parse_index({"manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": D256, "size": -1}]}, "idx")


def test_image_config() -> None:
    body = b'{"os":"linux","architecture":"amd64","config":{"Entrypoint":["/e"],"Env":["A=1"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' % D256.encode()
    parsed = parse_image_config(body, "cfg")
    assert parsed.image.entrypoint == ("/e",)
    assert parsed.image.cmd is None
    assert parsed.image.env == ("A=1",)
    assert parsed.image.working_dir == "/w"
    assert [str(d) for d in parsed.diff_ids] == [D256]
    with pytest.raises(ManifestError, match="Cmd must be a list of strings"):
        parse_image_config(b'{"config":{"Cmd":"sh"}}', "cfg")
