"""Benchmark: cold pull + unpack of a ~100 MB multi-layer image from a local docker-registry with
``prepare_image``, against ``skopeo copy`` + ``umoci unpack`` of the same image in the same run,
plus a warm (cached) start against a repeated ``skopeo copy`` whose blobs are all present. Writes
``results-pull.json`` (tables for ``report.py``). Run:
``.venv/bin/python scripts/bench/pull.py [--runs N] [--json PATH]``."""

from __future__ import annotations

import argparse
import json
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


def skopeo_umoci(host: str, repo: str, digest: str, work: Path, warm_runs: int = 0) -> tuple[float, list[float]]:
    """Cold ``skopeo copy`` + ``umoci unpack``; then ``warm_runs`` repeated copies into the same OCI
    directory (every blob already there: skopeo's own warm path; the bundle is left as it is)."""
    oci_dir, bundle = work / "oci", work / "bundle"
    work.mkdir(parents=True)
    copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{host}/{repo}@{digest}", f"oci:{oci_dir}:bench"]
    start = time.perf_counter()
    timed(copy)
    timed(["umoci", "unpack", "--image", f"{oci_dir}:bench", str(bundle)])
    elapsed = time.perf_counter() - start
    warm = [timed(copy) for _ in range(warm_runs)]
    shutil.rmtree(work)
    return elapsed, warm


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
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results-pull.json"),
                        help="where to write the results for report.py")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        base = Path(tmp)
        layout = base / "layout"
        digest = build_layout(layout, image_layers(), config=ImageConfig(cmd=("/bin/sh",)))
        blob_bytes = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
        with run_registry(base / "registry") as registry:
            trio.run(lambda: push_layout(layout, registry.url, "bench/image", digest=digest))
            # warm the registry's page cache once, untimed
            skopeo_umoci(registry.host, "bench/image", digest, base / "warmup")
            theirs_t: list[float] = []
            ours_t: list[float] = []
            warm_t: list[float] = []
            theirs_warm: list[float] = []
            stalls: list[float] = []
            for i in range(args.runs):
                cold_s, warm_s = skopeo_umoci(registry.host, "bench/image", digest, base / f"s{i}", 5)
                theirs_t.append(cold_s)
                theirs_warm.extend(warm_s)
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
    print(f"repeated skopeo copy, all blobs present: median {statistics.median(theirs_warm) * 1000:.0f} ms over {len(theirs_warm)}")
    write_json(args.json, blob_bytes, ours_t, theirs_t, warm_t, theirs_warm, max(stalls), args.runs)


OURS = "prepare_image (runner-agent)"
THEIRS = "skopeo copy + umoci unpack"


def ms(values: list[float]) -> list[float]:
    return [round(v * 1000, 3) for v in values]


def write_json(path: Path, blob_bytes: int, ours_t: list[float], theirs_t: list[float],
               warm_t: list[float], theirs_warm: list[float], stall: float, runs: int) -> None:
    """The figures of this run for ``report.py`` (shape in its docstring)."""
    results = {
        "title": "Image pull + unpack (pull.py)",
        "description": (
            f"Image: 4 gzip layers, {blob_bytes / MB:.1f} MiB compressed, ~100 MiB unpacked (busybox + "
            "30 x 1 MiB random, 3000 x 10 kB text files in 30 directories, 5 x 4 MiB random, "
            "100 x 200 kB text), pushed to a local `docker-registry` on 127.0.0.1. Each of the "
            f"{runs} runs: a fresh cache for `prepare_image` (the agent's pull: manifest, concurrent "
            "verified blob downloads, unpack into the rootfs cache), and a fresh directory for "
            "`skopeo copy docker://… oci:…` + `umoci unpack` of the same image (both from Debian), "
            "interleaved; the registry's storage is read once, untimed, before the timed runs. "
            "Warm start: `prepare_image` again with the rootfs cached (lease + index update), 20 per "
            "run, against skopeo's own warm path: `skopeo copy` into the OCI directory that already "
            "holds every blob (5 per run)."
        ),
        "machine": machine(),
        "tables": [
            {
                "name": "cold pull + unpack", "unit": "ms", "baseline": THEIRS,
                "target": {"row": OURS, "stat": "ratio", "op": "<=", "value": 1.0},
                "rows": [{"name": OURS, "samples": ms(ours_t)}, {"name": THEIRS, "samples": ms(theirs_t)}],
            },
            {
                "name": "warm (cached) start", "unit": "ms", "baseline": "skopeo copy, all blobs present",
                "rows": [{"name": OURS, "samples": ms(warm_t)},
                         {"name": "skopeo copy, all blobs present", "samples": ms(theirs_warm)}],
            },
        ],
        "notes": (
            f"Worst trio-loop stall during the cold pulls (a 5 ms ticker in the same loop): "
            f"{stall * 1000:.0f} ms. The stalls are GIL hand-offs between the trio thread and the "
            "unpack/writer threads, not blocking calls; far below a heartbeat interval.\n\n"
            "Where the cold time goes: file creation dominates the 3000-small-file layer "
            "(~1.5 ms per `open(O_CREAT)` serially on this VM's ext4), so the unpacker overlaps "
            "creation in 4 writer threads and skips the existence `stat` in directories the layer "
            "itself created; the rest is gzip inflate and tar header parsing. Downloads run "
            "concurrently (4 at a time) and layer *n* is unpacked as soon as layers ≤ *n* are "
            "verified, so the network time mostly hides behind unpacking. On a shared machine single "
            "runs vary by up to 2x; compare the medians of one run."
        ),
    }
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def machine() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"{os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}; "
            f"load average at the end of the run {load}")


if __name__ == "__main__":
    main()
