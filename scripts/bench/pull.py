"""Benchmark: cold pull + unpack of a ~100 MB multi-layer image from a local docker-registry with
``prepare_image``, against ``skopeo copy`` + ``umoci unpack`` of the same image in the same run,
plus a warm (cached) start. Run: ``.venv/bin/python scripts/bench/pull.py [--runs N]``."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from runner_agent.oci.build import File, FileSpec, build_layout, push_layout  # noqa: E402
from runner_agent.oci.cache import ImageCache  # noqa: E402
from runner_agent.oci.fetch import prepare_image  # noqa: E402
from runner_agent.oci.image import ImageConfig  # noqa: E402
from runner_agent.oci.source import RegistrySource  # noqa: E402
from tests.support.images import busybox_files  # noqa: E402
from tests.support.registry import run_registry  # noqa: E402

MB = 1024 * 1024
WORDS = [f"w{i:04x}" for i in range(4096)]


def _text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(WORDS, k=200)) + "\n").encode()
    return bytes(out[:size])


def image_layers(seed: int = 7) -> list[dict[str, FileSpec]]:
    """~100 MB in 4 layers: incompressible blobs and compressible text, large and small files."""
    rng = random.Random(seed)
    base: dict[str, FileSpec] = dict(busybox_files())
    base.update({f"opt/big/{i:02d}.bin": File(rng.randbytes(MB)) for i in range(30)})
    text = {f"usr/share/doc/{i // 100:02d}/{i:04d}.txt": File(_text(rng, 10_000)) for i in range(3000)}
    large = {f"opt/data/{i}.bin": File(rng.randbytes(4 * MB)) for i in range(5)}
    logs = {f"var/log/{i:03d}.log": File(_text(rng, 200_000)) for i in range(100)}
    return [base, text, large, logs]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {result.stderr.decode()}")
    return time.perf_counter() - start


def skopeo_umoci(host: str, repo: str, digest: str, work: Path) -> float:
    oci_dir, bundle = work / "oci", work / "bundle"
    work.mkdir(parents=True)
    start = time.perf_counter()
    timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
           f"docker://{host}/{repo}@{digest}", f"oci:{oci_dir}:bench"])
    timed(["umoci", "unpack", "--image", f"{oci_dir}:bench", str(bundle)])
    elapsed = time.perf_counter() - start
    shutil.rmtree(work)
    return elapsed


async def ours(url: str, repo: str, digest: str, work: Path) -> tuple[float, list[float], float]:
    """Cold pull (timed, with a 5 ms ticker measuring how long the trio loop ever stalls), then
    20 warm starts."""
    cache = ImageCache(work / "cache")
    src = RegistrySource(url, repo, digest)
    worst_stall = 0.0

    async def ticker() -> None:
        nonlocal worst_stall
        while True:
            before = time.perf_counter()
            await trio.sleep(0.005)
            worst_stall = max(worst_stall, time.perf_counter() - before - 0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        start = time.perf_counter()
        image = await prepare_image(src, cache)
        cold = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    image.release()
    warm = []
    for _ in range(20):
        start = time.perf_counter()
        image = await prepare_image(src, cache)
        warm.append(time.perf_counter() - start)
        image.release()
    shutil.rmtree(work)
    return cold, warm, worst_stall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        base = Path(tmp)
        layout = base / "layout"
        digest = build_layout(layout, image_layers(), config=ImageConfig(cmd=("/bin/sh",)))
        blob_bytes = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
        with run_registry(base / "registry") as registry:
            trio.run(lambda: push_layout(layout, registry.url, "bench/image", digest=digest))
            # warm the registry's page cache once, untimed
            skopeo_umoci(registry.host, "bench/image", digest, base / "warmup")
            theirs_t, ours_t, warm_t, stalls = [], [], [], []
            for i in range(args.runs):
                theirs_t.append(skopeo_umoci(registry.host, "bench/image", digest, base / f"s{i}"))
                cold, warm, stall = trio.run(ours, registry.url, "bench/image", digest, base / f"o{i}")
                ours_t.append(cold)
                stalls.append(stall)
                warm_t.extend(warm)
    ours_med, theirs_med = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"image: 4 layers, {blob_bytes / MB:.1f} MB compressed (gzip), ~{(30 + 30 + 20 + 20)} MB unpacked")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(f"cold pull+unpack, prepare_image:      median {ours_med * 1000:.0f} ms  runs {[round(t * 1000) for t in ours_t]}")
    print(f"cold pull+unpack, skopeo copy + umoci: median {theirs_med * 1000:.0f} ms  runs {[round(t * 1000) for t in theirs_t]}")
    print(f"ratio ours/skopeo+umoci: {ours_med / theirs_med:.2f} (target <= 1.00)")
    print(f"trio loop worst stall during cold pulls (5 ms ticker): {max(stalls) * 1000:.1f} ms")
    print(f"warm (cached) start: median {statistics.median(warm_t) * 1000:.2f} ms, p90 {sorted(warm_t)[int(len(warm_t) * 0.9)] * 1000:.2f} ms over {len(warm_t)}")


if __name__ == "__main__":
    main()
