"""Several JAX processes (jax.distributed, CPU collectives over gloo) give the one-process numbers.

The test spawns the worker once alone and once as two local processes on localhost; each
of the two reads and places only its own rows of every batch. Training losses, EK-FAC
eigenvalues and pairwise scores agree to float32 summation order; Δ-Influence flags exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(process_id: int, processes: int, port: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    command = [sys.executable, "-m", "tests.multiprocess_worker", str(process_id), str(processes), str(port), str(out)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]


def test_two_processes_train_fit_score_and_flag_like_one(tmp_path):
    single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
    _finish([_spawn(0, 1, 0, single)])
    port = _free_port()
    _finish([_spawn(i, 2, port, multi if i == 0 else tmp_path / "unused.npz") for i in range(2)])
    one, two = np.load(single), np.load(multi)
    assert int(one["devices"]) == 1 and int(two["devices"]) == 2
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for key in (k for k in one.files if k.startswith("eig_")):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-4 * one[key].max(), err_msg=key)
    np.testing.assert_allclose(two["scores"], one["scores"], rtol=1e-3, atol=1e-4 * np.abs(one["scores"]).max())
    np.testing.assert_array_equal(two["flagged"], one["flagged"])
    assert not (tmp_path / "unused.npz").exists()  # only process 0 writes
