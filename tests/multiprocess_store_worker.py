"""One process of a multi-process run store (spawned by tests/test_multiprocess.py).

Usage: python -m tests.multiprocess_store_worker PROCESS_ID NUM_PROCESSES PORT RUN_DIR [DIE_IN_STAGE]

Opens a run store over RUN_DIR and runs two stages, each summing a batch sharded over the
processes' devices (so every process must take part) and writing the sum with
``save_array``. Prints one JSON line: this process's store events and the sums. With
DIE_IN_STAGE, process 1 exits abruptly inside that stage, as a killed process would.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from jaxpoison.distributed import DistributedError, initialize


def main(process_id: int, num_processes: int, port: int, run_dir: str, die_in: str | None) -> None:
    initialize(f"127.0.0.1:{port}", num_processes, process_id, heartbeat_timeout=10)
    import jax

    from jaxpoison.experiments.store import RunStore
    from jaxpoison.fileio import save_array
    from jaxpoison.sharding import data_mesh, local_rows, shard_local_batch

    mesh = data_mesh()
    rows = np.arange(8, dtype=np.float32)

    def stage(name: str, scale: float):
        def compute(directory):
            local = rows[local_rows(mesh, rows.size)] * scale
            (batch,) = shard_local_batch(mesh, rows.size, local)
            total = float(jax.jit(lambda x: x.sum())(batch))
            if name == die_in and jax.process_index() == 1:
                os._exit(17)  # no cleanup, no goodbye: a killed process
            save_array(directory / "total.npy", np.array([total]))
            return {"total": total}

        return compute

    try:
        with RunStore(run_dir, {"test": "multiprocess store"}) as store:
            _, first = store.run("first", {"scale": 1.0}, stage("first", 1.0))
            _, second = store.run("second", {"scale": 2.0}, stage("second", 2.0))
    except DistributedError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        os._exit(3)  # as the CLI does: JAX's shutdown would wait on the dead process
    print(json.dumps({"events": store.events, "totals": [first["total"], second["total"]]}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
