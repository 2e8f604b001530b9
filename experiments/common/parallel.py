"""Data parallelism: one 'data' mesh axis over all devices, multi-host via jax.distributed.

Arrays are global (jit with NamedSharding, as in the JAX sharding guide): the dataset and the
train state are replicated, and each global batch is split across the devices along its first
axis.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MULTIHOST_ENV = "GSC_JAX_MULTIHOST"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def maybe_initialize_distributed(multihost: bool) -> None:
    """Calls `jax.distributed.initialize()` for a multi-host launch.

    A launch is multi-host when `multihost` is true or the environment variable GSC_JAX_MULTIHOST=1
    is set. The coordinator address, process count and process id come from the cluster
    environment that `initialize` detects (SLURM, Open MPI, TPU pods, ...) or from the variables
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. JAX
    itself reads only the first of these three (jax 0.10), so the other two are passed here.

    Every process runs the same program on the same data (the dataset is loaded by each and
    replicated; each global batch is split over all processes' devices); only process 0 writes
    metrics.jsonl, summary.json and the plots, and all processes take part in checkpointing.
    """
    if multihost or os.environ.get(MULTIHOST_ENV) == "1":
        jax.distributed.initialize(
            num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID")
        )


def make_mesh() -> Mesh:
    """A 1-D mesh with axis 'data' over all (global) devices."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis across the 'data' axis."""
    return NamedSharding(mesh, P("data"))


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """Places a host array (identical on every process) on all devices of `mesh`."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, replicated(mesh), lambda idx: array[idx])


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Raises ValueError unless the global batch splits evenly across the devices."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise ValueError(
            f"{name} {batch_size} must be a positive multiple of the {n} devices; "
            f"use e.g. --{name}={max(n, batch_size - batch_size % n)}."
        )
