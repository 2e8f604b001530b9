"""Data parallelism: one 'data' mesh axis over all devices, multi-host via jax.distributed.

Arrays are global (jit + NamedSharding, style.md section 4): the dataset and the train state are
replicated, and each global batch is split across the devices along its first axis.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MULTIHOST_ENV = "GSC_JAX_MULTIHOST"


def maybe_initialize_distributed(multihost: bool) -> None:
    """Calls `jax.distributed.initialize()` for a multi-host launch.

    A launch is multi-host when `multihost` is true or the environment variable GSC_JAX_MULTIHOST=1
    is set; the coordinator address, process count and id come from the cluster environment (SLURM,
    TPU pods, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID) as `initialize`
    documents.
    """
    if multihost or os.environ.get(MULTIHOST_ENV) == "1":
        jax.distributed.initialize()


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


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError unless the global batch splits evenly across the devices."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of the {n} devices; "
            f"use e.g. --batch_size {max(n, batch_size - batch_size % n)}."
        )
