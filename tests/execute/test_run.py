"""Running real jobs: real processes, real bwrap, real sockets on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from runner_agent.execute import JobControl, run_plan
from runner_agent.execute.control import timeout_error
from runner_agent.execute.options import SandboxMode
from tests.execute.jobs import plan_for, processes_with

MODES: list[SandboxMode] = ["sandbox", "host"]
BMF = '{"bench":{"latency":{"value":1.5}}}'


@pytest.mark.parametrize("mode", MODES)
async def test_happy_path_iterations_with_bmf_on_stdout(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, mode, f"echo '{BMF}'; echo note >&2", {"iter": 3})
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed" and outcome.error is None
    assert [(r.exit_code, r.stdout, r.stderr, r.output) for r in outcome.results] == [
        (0, BMF + "\n", "note\n", None)
    ] * 3
    assert [m.iteration for m in outcome.metrics] == [0, 1, 2]
    assert all(m.wall_s > 0 and m.exit_code == 0 and not m.killed for m in outcome.metrics)


@pytest.mark.parametrize("mode", MODES)
async def test_file_paths_read_per_iteration_and_missing_skipped(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    script = "mkdir -p /output; echo \"{\\\"n\\\":$$}\" > /output/results.json; echo out"
    if mode == "host":  # host mode writes relative to the image's working dir only
        script = "mkdir -p output; echo '{\"n\":1}' > output/results.json; echo out"
    plan = plan_for(
        busybox_rootfs, tmp_path, mode, script,
        {"iter": 2, "file_paths": ["/output/results.json", "/missing.json"]},
    )
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed"
    for r in outcome.results:
        assert r.output is not None and list(r.output) == ["/output/results.json"]
        assert json.loads(r.output["/output/results.json"])["n"] > 0
        assert r.stdout == "out\n"
    assert not (busybox_rootfs / "output").exists()  # the shared rootfs is never written
    assert not list((tmp_path / "work").iterdir())  # per-iteration layers are removed


async def test_all_file_paths_missing_gives_no_output(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "echo hi", {"file_paths": ["/nope"]})
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.results[0].output is None and outcome.results[0].stdout == "hi\n"


async def test_build_time_and_file_size_replace_output(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(
        busybox_rootfs, tmp_path, "sandbox", "printf 12345 > /tmp/a.bin",
        {"build_time": True, "file_size": True, "file_paths": ["/tmp/a.bin"]},
    )
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    output = outcome.results[0].output
    assert output is not None and list(output) == ["\0bencher"]
    bmf = json.loads(output["\0bencher"])
    assert bmf["a.bin"]["file-size"]["value"] == 5.0
    assert bmf["/bin/sh -c printf 12345 > /tmp/a.bin"]["build-time"]["value"] >= 0.0


@pytest.mark.parametrize("mode", MODES)
async def test_nonzero_exit_stops_without_allow_failure(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, mode, "echo x; exit 3", {"iter": 3})
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "failed"
    assert outcome.error == "Benchmark exited with non-zero exit code: 3"
    assert [(r.exit_code, r.stdout) for r in outcome.results] == [(3, "x\n")]


async def test_nonzero_exit_continues_with_allow_failure(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "exit 3", {"iter": 3, "allow_failure": True})
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed" and outcome.error is None
    assert [r.exit_code for r in outcome.results] == [3, 3, 3]


async def test_signal_exit_code_is_128_plus_signal(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, "host", "kill -9 $$")
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.error == "Benchmark exited with non-zero exit code: 137"
    assert outcome.metrics[0].signal == 9 and outcome.metrics[0].exit_code is None


def assert_no_scratch_left(tmp_path: Path) -> None:
    """The iteration's overlay is unmounted and its directory deleted."""
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts
    assert list((tmp_path / "work").iterdir()) == []


async def _ready_listener() -> tuple[trio.SocketListener, int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    return listener, listener.socket.getsockname()[1]


@pytest.mark.parametrize("mode", MODES)
async def test_timeout_kills_the_tree_and_fails(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    marker = f"98{os.getpid() % 10000:04d}1"
    plan = plan_for(
        busybox_rootfs, tmp_path, mode, f"sleep {marker} & sleep {marker}",
        {"timeout": 1, "iter": 2}, opts={"kill_grace": 0.2},
    )
    with trio.fail_after(20):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "failed"
    assert outcome.error == timeout_error(1) == "Execution error: Benchmark timeout: job timed out after 1 s"
    assert outcome.results == () and outcome.metrics[0].killed
    assert processes_with(marker) == []
    assert_no_scratch_left(tmp_path)


@pytest.mark.parametrize("mode", MODES)
async def test_cancel_mid_run_leaves_no_process_even_setsid_escapees(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    marker = f"97{os.getpid() % 10000:04d}2"
    listener, port = await _ready_listener()
    report = f"echo $$ | nc 127.0.0.1 {port}; exec sleep {marker}"
    script = (
        f"sh -c '{report}' & "
        f"(setsid sh -c '{report}' &); "
        f"(setsid sh -c 'trap \"\" TERM; {report}' &); wait"
    )
    plan = plan_for(
        busybox_rootfs, tmp_path, mode, script, {"timeout": 600}, opts={"kill_grace": 0.5},
        network=True,
    )
    control = JobControl()
    outcome = None

    async def run() -> None:
        nonlocal outcome
        outcome = await run_plan(plan, control)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            for _ in range(3):  # all three (two in their own session) are running
                conn = await listener.accept()
                assert (await conn.receive_some()).strip().isdigit()
                await conn.aclose()
            assert processes_with(marker)
            control.request_cancel("server sent cancel")
    await listener.aclose()
    assert outcome is not None and outcome.status == "canceled" and outcome.results == ()
    assert outcome.metrics[0].killed
    assert processes_with(marker) == []
    assert_no_scratch_left(tmp_path)


async def test_cancel_before_start_and_as_failure(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "echo never")
    control = JobControl()
    control.request_cancel("shutting down", outcome="failed")
    control.request_cancel("ignored")
    with trio.fail_after(10):
        outcome = await run_plan(plan, control)
    assert (outcome.status, outcome.error, outcome.results) == ("failed", "shutting down", ())


@pytest.mark.parametrize("network", [False, True])
async def test_network_only_when_the_spec_allows_it(
    busybox_rootfs: Path, tmp_path: Path, network: bool
) -> None:
    listener, port = await _ready_listener()
    plan = plan_for(
        busybox_rootfs, tmp_path, "sandbox", f"echo hello | nc 127.0.0.1 {port}", network=network
    )
    received = b""

    async def serve() -> None:
        nonlocal received
        conn = await listener.accept()
        received = await conn.receive_some()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            outcome = await run_plan(plan, JobControl())
            if not network:
                nursery.cancel_scope.cancel()
    await listener.aclose()
    if network:
        assert outcome.status == "completed" and received == b"hello\n"
    else:
        assert outcome.status == "failed" and outcome.results[0].exit_code != 0
        assert received == b""


@pytest.mark.parametrize("mode", MODES)
async def test_agent_environment_never_reaches_the_benchmark(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "bencher_runner_" + "s3cr3t" * 5
    monkeypatch.setenv("BENCHER_RUNNER_KEY", key)
    monkeypatch.setenv("AGENT_ONLY", "1")
    plan = plan_for(busybox_rootfs, tmp_path, mode, "env; cat /proc/self/environ", {"env": {"J": "v"}})
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    out = outcome.results[0].stdout or ""
    assert key not in out and "AGENT_ONLY" not in out and "BENCHER" not in out
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert {"PATH", "J"} <= names <= {"PATH", "J", "PWD", "SHLVL"}


@pytest.mark.parametrize("mode", MODES)
async def test_job_env_values_are_on_no_command_line_but_in_the_benchmarks_environment(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    secret = f"project-secret-{os.getpid()}-x7q"
    marker = f"96{os.getpid() % 10000:04d}3"
    listener, port = await _ready_listener()
    plan = plan_for(
        busybox_rootfs, tmp_path, mode,
        f"echo \"$API_TOKEN\" | nc 127.0.0.1 {port}; exec sleep {marker}",
        {"env": {"API_TOKEN": secret}, "timeout": 600}, opts={"kill_grace": 0.2}, network=True,
    )
    control = JobControl()
    received = b""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_plan, plan, control)
            conn = await listener.accept()  # the benchmark (with bwrap, gate...) is running
            assert processes_with(marker)  # its process tree, seen while it runs
            assert processes_with(secret) == []  # no process shows the value in its cmdline
            while not received.endswith(b"\n") and (chunk := await conn.receive_some()):
                received += chunk
            await conn.aclose()
            control.request_cancel("test done")
    await listener.aclose()
    assert received == f"{secret}\n".encode()  # the benchmark itself has it
    assert processes_with(marker) == []


async def test_sandboxed_environment_is_exactly_the_plan_plus_bwraps_pwd(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent-agent-preload.so")
    plan = plan_for(
        busybox_rootfs, tmp_path, "sandbox", "",  # cat itself, no shell (which adds SHLVL)
        {"entrypoint": ["/bin/cat"], "cmd": ["/proc/self/environ"],
         "env": {"J": "v w", "EMPTY": "", "LD_DEBUG": "x"}},
    )
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed"
    entries = sorted(e for e in (outcome.results[0].stdout or "").split("\0") if e)
    assert entries == sorted([*(f"{k}={v}" for k, v in plan.env), f"PWD={plan.workdir}"])


async def test_huge_output_is_bounded(busybox_rootfs: Path, tmp_path: Path) -> None:
    def hwm_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    script = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 100000000; yes e | head -c 5000000 >&2"
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", script, {"iter": 2})
    before = hwm_kb()
    with trio.fail_after(60):
        outcome = await run_plan(plan, JobControl())
    assert hwm_kb() - before < 64 * 1024
    assert outcome.metrics[0].stdout_bytes == 100_000_000
    assert outcome.metrics[0].stderr_bytes == 5_000_000
    stdout = outcome.results[0].stdout or ""
    assert stdout.startswith("0123456789") and "bytes of stdout dropped" in stdout
    msg = outcome.to_message(plan.job, plan.options.max_message_size)
    from runner_agent.protocol import encode

    assert len(encode(msg).encode()) <= plan.options.max_message_size
    small = outcome.to_message(plan.job, 100_000)
    assert len(encode(small).encode()) <= 100_000


@pytest.mark.parametrize("mode", MODES)
async def test_sigterm_first_and_the_benchmark_may_exit_cleanly(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    listener, port = await _ready_listener()
    script = f'trap "exit 7" TERM; echo up | nc 127.0.0.1 {port}; while true; do sleep 1; done'
    plan = plan_for(busybox_rootfs, tmp_path, mode, script, opts={"kill_grace": 20}, network=True)
    control = JobControl()
    outcome = None

    async def run() -> None:
        nonlocal outcome
        outcome = await run_plan(plan, control)

    with trio.fail_after(15):  # well under the 20 s grace: SIGTERM alone ended it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            conn = await listener.accept()
            await conn.receive_some()
            control.request_cancel("cancel")
    await listener.aclose()
    assert outcome is not None and outcome.status == "canceled"
    m = outcome.metrics[0]
    assert m.killed and m.exit_code == 7 and m.signal is None


@pytest.mark.parametrize("mode", MODES)
async def test_metrics_are_the_benchmarks_own(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    script = "head -c 40000000 /dev/zero | tail -c 40000000 | head -c 1 >/dev/null; i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
    small = plan_for(busybox_rootfs, tmp_path, mode, "true")
    big = plan_for(busybox_rootfs, tmp_path, mode, script)
    with trio.fail_after(60):
        tiny = (await run_plan(small, JobControl())).metrics[0]
        large = (await run_plan(big, JobControl())).metrics[0]
    assert tiny.max_rss_kb < 20_000  # not the agent's own size
    assert large.max_rss_kb > 39_000
    assert large.user_s + large.sys_s > 0.05 and large.wall_s >= large.user_s * 0.5


async def test_iter_zero_runs_nothing_like_bencher(busybox_rootfs: Path, tmp_path: Path) -> None:
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", "exit 1", {"iter": 0})
    with trio.fail_after(10):
        outcome = await run_plan(plan, JobControl())
    assert (outcome.status, outcome.results, outcome.metrics) == ("completed", (), ())


async def test_sandboxed_benchmark_has_no_capabilities(busybox_rootfs: Path, tmp_path: Path) -> None:
    # bwrap run by root keeps root's capabilities unless told otherwise: with them a benchmark
    # could mknod the host's disk, mount it and read the agent's key, or lift its memory limit
    script = "grep CapEff /proc/self/status; mknod /tmp/disk b 8 0 && echo MKNOD-ALLOWED; true"
    plan = plan_for(busybox_rootfs, tmp_path, "sandbox", script)
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    out = outcome.results[0].stdout or ""
    assert "CapEff:\t0000000000000000" in out
    assert "MKNOD-ALLOWED" not in out


@pytest.mark.parametrize("mode", MODES)
async def test_file_paths_that_are_not_regular_files_are_skipped(
    busybox_rootfs: Path, tmp_path: Path, mode: SandboxMode
) -> None:
    # a FIFO left at a file path used to block the agent's event loop forever in open()
    script = "mkfifo fifo.json; mkdir dir.json; echo '{}' > ok.json"
    plan = plan_for(
        busybox_rootfs, tmp_path, mode, script,
        {"file_paths": ["/fifo.json", "/dir.json", "/ok.json"]},
    )
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed"
    assert outcome.results[0].output == {"/ok.json": "{}\n"}


async def test_output_kept_across_many_iterations_is_bounded(busybox_rootfs: Path, tmp_path: Path) -> None:
    # each iteration keeps up to stream_cap of each stream; without a running cut 40 iterations
    # would hold 40 x 256 KiB however small the message limit is
    limit = 64 * 1024
    script = "yes 0123456789abcdef | head -c 300000; echo; echo done"
    plan = plan_for(
        busybox_rootfs, tmp_path, "host", script, {"iter": 40},
        opts={"max_message_size": limit, "stream_cap": 256 * 1024},
    )
    with trio.fail_after(60):
        outcome = await run_plan(plan, JobControl())
    assert outcome.status == "completed" and len(outcome.results) == 40
    kept = sum(len(r.stdout or "") for r in outcome.results)
    assert kept <= 2 * limit + 256 * 1024
    assert all((r.stdout or "").startswith("0123456789abcdef") for r in outcome.results)
    assert all((r.stdout or "").endswith("done\n") for r in outcome.results)
    from runner_agent.protocol import encode

    assert len(encode(outcome.to_message(plan.job, limit)).encode()) <= limit


async def test_file_paths_read_at_most_the_cap_together(busybox_rootfs: Path, tmp_path: Path) -> None:
    cap = 256 * 1024
    paths = [f"/out/f{i}.txt" for i in range(20)]
    script = "mkdir -p /out; for i in $(seq 0 19); do yes abcdefgh | head -c 100000 > /out/f$i.txt; done"
    plan = plan_for(
        busybox_rootfs, tmp_path, "sandbox", script, {"file_paths": paths},
        opts={"file_read_cap": cap},
    )
    with trio.fail_after(30):
        outcome = await run_plan(plan, JobControl())
    output = outcome.results[0].output
    assert output is not None and sorted(output) == sorted(paths)  # every file keeps its share
    markers = sum(len(v) - len(v.split("\n[runner-agent:")[0]) for v in output.values())
    assert sum(len(v) for v in output.values()) - markers <= cap
    assert all(v.startswith("abcdefgh") and "file truncated" in v for v in output.values())
