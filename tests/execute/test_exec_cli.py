"""``runner-agent exec`` end to end: job JSON against a real registry, OCI layout dirs, usage
errors; and `execute_job` turning image problems into a failed outcome."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from runner_agent.cli import main
from runner_agent.execute import ExecOptions, JobControl, execute_job
from runner_agent.oci.cache import ImageCache
from runner_agent.oci.source import LayoutSource, RegistrySource
from tests.execute.jobs import job_dict, make_job
from tests.support.images import busybox_layout, push_busybox_sync
from tests.support.registry import RegistryServer

PROJECT = "7f3e2a10-0b1c-4d2e-8f90-123456789abc"


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    busybox_layout(tmp_path / "layout")
    return tmp_path / "layout"


def test_job_json_against_a_real_registry(registry: RegistryServer, tmp_path: Path) -> None:
    image = push_busybox_sync(registry.url, PROJECT, tmp_path)
    doc = job_dict({
        "registry": registry.url + "/", "project": PROJECT, "digest": image.digest,
        "entrypoint": ["/bin/sh", "-c"], "cmd": ["echo '{\"b\":{\"l\":{\"value\":2}}}'"],
        "iter": 2,
    })
    doc["event"] = "job"
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "runner_agent", "exec", str(job_file), "--json",
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    msg = json.loads(done.stdout)
    assert msg == {
        "event": "completed", "job": doc["uuid"],
        "results": [{"exit_code": 0, "stdout": '{"b":{"l":{"value":2}}}\n'}] * 2,
    }


def test_config_only_json_with_overrides(registry: RegistryServer, tmp_path: Path) -> None:
    image = push_busybox_sync(registry.url, PROJECT, tmp_path)
    config = {"registry": registry.url, "project": PROJECT, "digest": image.digest, "timeout": 60}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, [
        "exec", str(tmp_path / "config.json"), "--json", "--iter", "3", "--env", "GREETING=hey",
        "--cache-dir", str(tmp_path / "cache"), "--", "/bin/sh", "-c", "echo $GREETING; exit 5",
    ])
    assert result.exit_code == 1, result.output
    msg = json.loads(result.stdout)
    assert msg["event"] == "failed"
    assert msg["results"] == [{"exit_code": 5, "stdout": "hey\n"}]
    assert msg["error"] == "Benchmark exited with non-zero exit code: 5"


def test_layout_dir_human_table(layout: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "exec", str(layout), "--iter", "2", "--cache-dir", str(tmp_path / "cache"),
        "--", "/bin/sh", "-c", "echo first-line; echo second",
    ])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["iter", "exit", "wall", "s", "user", "s", "sys", "s", "peak", "RSS", "KiB", "output"]
    assert [line.split()[:2] for line in lines[1:3]] == [["1", "0"], ["2", "0"]]
    assert all(line.endswith("first-line") for line in lines[1:3])
    assert lines[3] == "status: completed"


def test_layout_dir_timeout_fails(layout: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "exec", str(layout), "--timeout", "1", "--kill-grace", "0.1", "--json",
        "--cache-dir", str(tmp_path / "cache"), "--", "/bin/sh", "-c", "sleep 60",
    ])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "Execution error: Benchmark timeout: job timed out after 1 s"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["/does/not/exist"], "no file, directory or image reference"),
        (["{layout}", "--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
        (["{layout}", "--iter", "-1"], "--iter"),
        (["{tmp}"], "not an OCI image layout"),
        (["{bad_json}"], "is not JSON"),
        (["{bad_config}"], "job file"),
    ],
)
def test_usage_errors_exit_2(layout: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "config.json").write_text(json.dumps({"registry": "https://r/", "timeout": 0}))
    names = {"layout": str(layout), "tmp": str(tmp_path / "cache-less"), "bad_json": str(tmp_path / "bad.json"),
             "bad_config": str(tmp_path / "config.json")}
    (tmp_path / "cache-less").mkdir()
    result = CliRunner().invoke(main, ["exec", *(a.format(**names) for a in args)])
    assert result.exit_code == 2
    assert needle in result.output


async def test_execute_job_image_errors_become_failed(tmp_path: Path) -> None:
    job = make_job()
    missing = LayoutSource(tmp_path / "no-layout")
    with trio.fail_after(30):
        outcome = await execute_job(
            job, missing, ImageCache(tmp_path / "cache"), ExecOptions(work_dir=tmp_path / "w"), JobControl()
        )
    assert outcome.status == "failed" and outcome.results == ()
    assert outcome.error and "no-layout" in outcome.error


async def test_execute_job_runs_a_layout_and_can_be_canceled_early(layout: Path, tmp_path: Path) -> None:
    job = make_job({"cmd": ["echo", "from-layout"]})
    cache = ImageCache(tmp_path / "cache")
    opts = ExecOptions(work_dir=tmp_path / "w")
    with trio.fail_after(60):
        outcome = await execute_job(job, LayoutSource(layout), cache, opts, JobControl())
        assert outcome.status == "completed"
        assert outcome.results[0].stdout == "from-layout\n"
        control = JobControl()
        control.request_cancel("server cancel")
        canceled = await execute_job(job, LayoutSource(layout), cache, opts, control)
    assert canceled.status == "canceled"


async def test_execute_job_missing_registry_image(registry: RegistryServer, tmp_path: Path) -> None:
    source = RegistrySource(registry=registry.url, repository=str(uuid.uuid4()), digest="sha256:" + "c" * 64)
    with trio.fail_after(60):
        outcome = await execute_job(
            make_job(), source, ImageCache(tmp_path / "cache"), ExecOptions(work_dir=tmp_path / "w"), JobControl()
        )
    assert outcome.status == "failed" and outcome.error


def test_layout_dir_in_host_mode(layout: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "exec", str(layout), "--danger-allow-no-sandbox", "--json",
        "--cache-dir", str(tmp_path / "cache"), "--", "/bin/sh", "-c", "echo host",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"] == [{"exit_code": 0, "stdout": "host\n"}]


def _stop_hung(proc: subprocess.Popen[bytes]) -> str:
    """A process that did not exit in time: its Python stacks (faulthandler, on SIGABRT) for the
    failure message."""
    import signal

    proc.send_signal(signal.SIGABRT)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace")[-8000:]


def _exec_with_listener(layout: Path, tmp_path: Path, script: str, *extra: str) -> tuple[
    subprocess.Popen[bytes], socket.socket
]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    port = server.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "runner_agent", "exec", str(layout),
         "--danger-allow-no-sandbox", "--cache-dir", str(tmp_path / "cache"), *extra, "--",
         "/bin/sh", "-c", script.replace("PORT", str(port))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    return proc, server


def _no_survivors(marker: str) -> None:
    import os
    import signal

    from tests.execute.jobs import processes_with

    survivors = processes_with(f"sleep\0{marker}")
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_ctrl_c_during_a_host_mode_run_leaves_no_process(layout: Path, tmp_path: Path) -> None:
    import os
    import signal

    marker = f"{os.getpid()}{uuid.uuid4().int % 10**6}"
    proc, server = _exec_with_listener(layout, tmp_path, f"echo up | nc 127.0.0.1 PORT; sleep {marker}")
    with server:
        try:
            conn, _ = server.accept()  # the benchmark is running
            conn.close()
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"exec still running 30 s after SIGINT; its stacks:\n{_stop_hung(proc)}")
            assert proc.returncode == 130
            assert b"Interrupted" in err and b"Traceback" not in err
        finally:
            proc.kill()
            proc.wait()
    _no_survivors(marker)


def test_sigterm_to_a_host_mode_exec_stops_the_job_and_leaves_no_process(
    layout: Path, tmp_path: Path
) -> None:
    """`kill <exec>` (what a supervisor sends) used to kill exec alone: in host mode the
    benchmark's processes then lived on."""
    import os
    import signal

    marker = f"{os.getpid()}{uuid.uuid4().int % 10**6}"
    proc, server = _exec_with_listener(layout, tmp_path, f"echo up | nc 127.0.0.1 PORT; sleep {marker}")
    with server:
        try:
            server.accept()[0].close()  # the benchmark is running
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"exec still running 30 s after SIGTERM; its stacks:\n{_stop_hung(proc)}")
            assert proc.returncode == 130, err
            assert b"Interrupted" in err and b"Traceback" not in err
        finally:
            proc.kill()
            proc.wait()
    _no_survivors(marker)


def test_a_second_ctrl_c_does_not_cut_the_kill_ladder_short(layout: Path, tmp_path: Path) -> None:
    """The benchmark survives SIGTERM (it restarts its sleep); a second Ctrl-C during the grace
    period is acknowledged, and the SIGKILL step still ends every process."""
    import os
    import signal

    marker = f"{os.getpid()}{uuid.uuid4().int % 10**6}"
    script = ("trap 'echo term | nc 127.0.0.1 PORT' TERM; echo up | nc 127.0.0.1 PORT; "
              f"while :; do sleep {marker} & wait; done")
    proc, server = _exec_with_listener(layout, tmp_path, script, "--kill-grace", "1")
    with server:
        try:
            server.accept()[0].close()  # running
            proc.send_signal(signal.SIGINT)
            server.accept()[0].close()  # the benchmark got SIGTERM, and carries on
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"exec still running 30 s after SIGINT; its stacks:\n{_stop_hung(proc)}")
            assert proc.returncode == 130, err
            assert b"Stopping: the job's processes get SIGKILL" in err
            assert b"Interrupted" in err and b"Traceback" not in err
        finally:
            proc.kill()
            proc.wait()
    _no_survivors(marker)
