"""Starting JAX's multi-controller runtime, and the two things every layer asks of it.

jaxpoison runs on several hosts the way JAX does: the same program starts once per process,
``jax.distributed.initialize`` connects the processes, and every ``jax.jit`` sees the global
device mesh. :func:`initialize` finds the settings in this order:

1. explicit arguments (``jaxpoison --coordinator HOST:PORT --num-processes N --process-id I``);
2. the environment: ``JAX_COORDINATOR_ADDRESS`` (read by JAX itself), ``JAX_NUM_PROCESSES`` and
   ``JAX_PROCESS_ID``;
3. JAX's cluster detection (SLURM, Open MPI, TPU pods, GKE) when ``auto=True``
   (``jaxpoison --distributed``).

Each process then reads only its own rows of every batch (``sharding.shard_local_batch``).
If a process dies, the others stop at their next collective with a :class:`DistributedError`
(or, while they compute alone, when its heartbeat times out), and rerunning the same command
resumes from the finished stages.
Files are written once: :func:`is_writer` is true on process 0 only, and :func:`barrier` lets
the others wait until what it wrote is there to read. Run directories must therefore be on a
file system every process sees (the same path on each host).
"""

from __future__ import annotations

import itertools
import os
from typing import NamedTuple

import jax

from jaxpoison.errors import InputError

ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"


class DistributedError(RuntimeError):
    """Another process of a multi-process run stopped answering (it died, or was killed or preempted)."""


class ProcessInfo(NamedTuple):
    """This process's place in the run: ``index`` of ``count`` processes."""

    index: int
    count: int


def _int_setting(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer; got {value!r}.") from None


def settings_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                  environ=os.environ) -> tuple[str | None, int | None, int | None]:  # fmt: skip
    """The (coordinator, process count, process id) from the arguments, else the environment.

    Raises:
      InputError: some but not all of the three are set, or they are inconsistent.
    """
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    count = num_processes if num_processes is not None else _int_setting(environ.get(ENV_NUM_PROCESSES),
                                                                           ENV_NUM_PROCESSES)  # fmt: skip
    index = process_id if process_id is not None else _int_setting(environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    given = {"coordinator": coordinator, "number of processes": count, "process id": index}
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = ", ".join(k for k, v in given.items() if v is None)
        raise InputError(f"a multi-process run needs the coordinator address, the number of processes and this "
                         f"process's id; missing: {missing}. Pass --coordinator HOST:PORT --num-processes N "
                         f"--process-id I, set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, or use "
                         "--distributed on a cluster JAX detects (SLURM, Open MPI, TPU).")  # fmt: skip
    if count is not None:
        if count < 1:
            raise InputError(f"the number of processes must be ≥ 1; got {count}.")
        if not 0 <= index < count:
            raise InputError(f"the process id must be in 0..{count - 1}; got {index}.")
        if ":" not in coordinator:
            raise InputError(f"the coordinator address must be HOST:PORT; got {coordinator!r}.")
    return coordinator, count, index


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False, heartbeat_timeout: int = 100) -> ProcessInfo:  # fmt: skip
    """Join the multi-process run the arguments or the environment describe (nothing to do for one process).

    Call it before any other JAX call. CPU devices talk over gloo.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service.
      num_processes: how many processes the run has.
      process_id: this process's id, ``0 .. num_processes - 1``.
      auto: with nothing set, let JAX detect the cluster (SLURM, Open MPI, TPU pods).
      heartbeat_timeout: seconds without a heartbeat after which a process counts as dead
        and the others stop with an error (JAX's default, 100).

    Returns:
      This process's index and the process count.
    """
    coordinator, count, index = settings_from(coordinator, num_processes, process_id)
    if count is None and not auto:
        return ProcessInfo(jax.process_index(), jax.process_count())
    if count == 1:
        return ProcessInfo(0, 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    if count is None:  # JAX's own cluster detection
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout)
    else:
        jax.distributed.initialize(coordinator, count, index, heartbeat_timeout_seconds=heartbeat_timeout)
    return ProcessInfo(jax.process_index(), jax.process_count())


def _multi_process() -> bool:
    # Without jax.distributed there is one process; asking the backend would start it, which
    # code that only writes files (the run store, fileio) should not pay for.
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes shared files (process 0; every process when there is one)."""
    return not _multi_process() or jax.process_index() == 0


_BARRIERS = itertools.count()


def barrier(name: str) -> None:
    """Wait until every process reaches this point (free with one process).

    Every process must call the same barriers in the same order; the name only helps to tell
    which one hung.
    """
    if not _multi_process():
        return
    from jax.experimental import multihost_utils

    try:
        multihost_utils.sync_global_devices(f"jaxpoison:{next(_BARRIERS)}:{name}")
    except Exception as e:  # the collective's transport reports the lost peer (e.g. gloo: connection reset)
        raise lost_peer(f"at {name!r}", e) from e


def lost_peer(where: str, error: BaseException) -> DistributedError:
    """The error a process raises when a collective fails because another process is gone."""
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return DistributedError(
        f"process {jax.process_index()} of {jax.process_count()} lost contact with the others {where} ({first}); "
        "another process probably died. Rerun the same command on every process: finished stages are reused "
        "and an interrupted one starts again."
    )
