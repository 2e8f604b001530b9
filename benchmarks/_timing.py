"""Shared timing discipline: warm-up, round-robin interleaving, medians, machine description."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU count, platform, device and library versions."""
    import jaxlib
    import optax

    device = jax.devices()[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    return {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
    }


def interleaved_medians(
    calls: Mapping[str, Callable[[], Any]], *, repeats: int, min_sample_s: float = 2e-3
) -> dict[str, dict[str, float]]:
    """Times every call round-robin, ``repeats`` samples each, and returns per-call statistics.

    Every call is run once first (compilation, warm-up). A sample runs a call ``number`` times in a
    row, with ``number`` chosen once, for all calls alike, so that the fastest call's sample takes
    at least ``min_sample_s``; the reported times are per call. Round-robin order rotates by one
    each repeat so that no candidate always follows the same neighbour.

    Returns:
      ``{name: {"median_s", "min_s", "p25_s", "p75_s", "number", "repeats"}}``.
    """
    names = list(calls)
    for name in names:
        jax.block_until_ready(calls[name]())
    fastest = min(_time_once(calls[name], 1) for name in names for _ in range(3))
    number = max(1, int(np.ceil(min_sample_s / max(fastest, 1e-9))))
    samples = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_once(calls[name], number) / number)
    return {
        name: {
            "median_s": float(np.median(values)),
            "min_s": float(np.min(values)),
            "p25_s": float(np.percentile(values, 25)),
            "p75_s": float(np.percentile(values, 75)),
            "number": number,
            "repeats": repeats,
        }
        for name, values in samples.items()
    }


def _time_once(call: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        out = call()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` as indented JSON, creating the parent directory."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
