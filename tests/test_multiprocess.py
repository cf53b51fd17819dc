"""Several JAX processes (jax.distributed, CPU collectives over gloo) give the one-process numbers.

The test spawns the worker once alone and once as two local processes on localhost; each
of the two reads and places only its own rows of every batch. Training losses, EK-FAC
eigenvalues and pairwise scores agree to float32 summation order; Δ-Influence flags exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(process_id: int, processes: int, port: int, out: Path, devices: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
           "JAX_NUM_CPU_DEVICES": str(devices)}  # fmt: skip
    command = [sys.executable, "-m", "tests.multiprocess_worker", str(process_id), str(processes), str(port), str(out)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]


def _compare(one, two) -> None:
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for key in (k for k in one.files if k.startswith("eig_")):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-4 * one[key].max(), err_msg=key)
    np.testing.assert_allclose(two["scores"], one["scores"], rtol=1e-3, atol=1e-4 * np.abs(one["scores"]).max())
    np.testing.assert_array_equal(two["flagged"], one["flagged"])


def test_two_processes_train_fit_score_and_flag_like_one(tmp_path):
    single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
    _finish([_spawn(0, 1, 0, single)])
    port = _free_port()
    _finish([_spawn(i, 2, port, multi if i == 0 else tmp_path / "unused.npz") for i in range(2)])
    one, two = np.load(single), np.load(multi)
    assert int(one["devices"]) == 1 and int(two["devices"]) == 2
    _compare(one, two)
    assert not (tmp_path / "unused.npz").exists()  # only process 0 writes


@pytest.mark.slow  # four processes on two cores: a few minutes
def test_four_processes_of_two_devices_each_train_fit_score_and_flag_like_one_device(tmp_path):
    single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
    _finish([_spawn(0, 1, 0, single)])
    port = _free_port()
    _finish([_spawn(i, 4, port, multi if i == 0 else tmp_path / f"unused{i}.npz", devices=2) for i in range(4)])
    one, eight = np.load(single), np.load(multi)
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    _compare(one, eight)


def _spawn_store(process_id: int, port: int, run_dir: Path, die_in: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    command = [sys.executable, "-m", "tests.multiprocess_store_worker", str(process_id), "2", str(port), str(run_dir),
               *([die_in] if die_in else [])]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _store_results(procs: list[subprocess.Popen]) -> list[tuple[int, dict | None]]:
    """Each process's exit status and its JSON line (None if it printed none)."""
    results = []
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        results.append((proc.returncode, json.loads(lines[-1]) if lines else None))
    return results


def test_a_run_store_shared_by_two_processes_is_written_once_and_a_killed_process_fails_the_run(tmp_path):
    run = tmp_path / "run"
    # process 1 dies inside the second stage: process 0 stops with a clear error, not a hang
    port = _free_port()
    (rc0, out0), (rc1, _) = _store_results([_spawn_store(i, port, run, die_in="second") for i in range(2)])
    assert (rc0, rc1) == (3, 17)
    assert "lost contact with the others" in out0["error"] and "Rerun the same command" in out0["error"]
    assert (run / "stages/first/stage.json").exists() and not (run / "stages/second/stage.json").exists()
    assert (run / ".lock").read_text().strip() != ""  # process 0 held the lock
    # the rerun on both processes reuses the finished stage and recomputes the interrupted one
    port = _free_port()
    results = _store_results([_spawn_store(i, port, run) for i in range(2)])
    assert [rc for rc, _ in results] == [0, 0]
    for _, out in results:
        assert out["events"] == [["first", "reused"], ["second", "computed"]]
        assert out["totals"] == [28.0, 56.0]  # each sum needed both processes' rows
    marker = json.loads((run / "stages/second/stage.json").read_text())
    assert list(marker["files"]) == ["total.npy"]  # written once, by process 0, and hashed
    assert np.load(run / "stages/second/total.npy").tolist() == [56.0]
    assert not list(run.rglob(".*.tmp"))


# every detector and unlearner, so that every streamed pass runs under several processes
EVERY_METHOD = ("--set", "detection.methods=delta_influence,ekfac,trak,spectral,activation_clustering,freqdef",
                "--set", "unlearning.methods=eu,cf,cf_reset,ssd,scrub,badt")  # fmt: skip


def _spawn_run(out: Path, *launch: str, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.update(extra_env or {})
    command = [sys.executable, "-m", "jaxpoison.cli", *launch, "run", "digits-badnet-tiny", "--out", str(out),
               "--no-progress", *EVERY_METHOD]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _tables(report: dict) -> dict:
    """A report without its timings (and the process layout), the part two runs must share."""
    drop = {"seconds", "stage_seconds", "environment", "total_seconds", "phases", "devices", "processes"}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in drop and not k.endswith("_seconds")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return round(value, 3) if isinstance(value, float) else value

    return strip(report)


@pytest.mark.slow  # three tiny runs, ~4 minutes on two cores
def test_jaxpoison_run_under_two_processes_gives_the_one_process_report_and_writes_once(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # the reference is one process with two devices: the same mesh, so the same summation order
    # (against one device, training differs in float32 rounding: victim PSR 0.978 vs 0.981)
    _finish([_spawn_run(one, extra_env={"JAX_NUM_CPU_DEVICES": "2"})])
    port = _free_port()
    # one process by flags, the other by JAX's environment variables: the same command either way
    procs = [_spawn_run(two, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"),
             _spawn_run(two, extra_env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                                        "JAX_PROCESS_ID": "1"})]  # fmt: skip
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "Report:" in outputs[0] and "Report:" not in outputs[1]  # process 0 alone prints and writes
    single, multi = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert _tables(multi) == _tables(single)
    assert not list(two.rglob(".*.tmp"))  # every write landed whole
    markers = sorted(p.parent.name for p in two.rglob("stage.json"))
    assert markers == sorted(p.parent.name for p in one.rglob("stage.json"))
    # rerun under two processes: every stage is reused, on both
    procs = [_spawn_run(two, "--coordinator", f"127.0.0.1:{port + 1}", "--num-processes", "2", "--process-id", str(i))
             for i in range(2)]  # fmt: skip
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:]
    stages = json.loads((two / "report.json").read_text())["stages"]
    assert stages.keys() == multi["stages"].keys()
    assert {s["this_run"] for s in stages.values()} == {"reused"}
