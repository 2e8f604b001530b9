"""Evaluators as plug-ins (big_vision's design): declared in `config.evals`, built by type name.

`config.evals.<name> = {'type': ..., ...options}`; the type is a name of `TYPES` or the dotted
path 'package.module.Class' of an experiment's own evaluator (e.g. face verification). An
evaluator is built once, before training, from (name, options, `Context`) and then

- `run(state) -> (scalars, details)`: scalars are numbers (lists over the members of a
  population), logged by the loop as '<name>/<key>' in metrics.jsonl, TensorBoard and the
  console line; details (reliability data, curves, matrices) go to summary.json only;
- `write(scalars, details, workdir, title)`: the final state's figures and files (process 0).

The loop never names a metric: it logs whatever the evaluators yield.
"""

import dataclasses
import importlib
from typing import Callable

from experiments.common.evaluators.classification import Classification
from experiments.common.evaluators.classification import Multiview

TYPES = {"classification": Classification, "multiview": Multiview}


@dataclasses.dataclass
class Context:
    """What an evaluator may use.

    Attributes:
      config: the run's config.
      source: the data source (`data.Source`).
      model: the Flax module.
      logits: jitted-traceable `logits(state, images) -> float32 [(P,) B, K]` in eval mode.
      mesh: the device mesh.
      replicated: the replicated sharding of `mesh`.
      num_classes, num_bins, eval_batch_size: from the source and the config.
      population: the number of members of a population run, 0 for a single run.
      workdir: the run's directory.
    """

    config: object
    source: object
    model: object
    logits: Callable
    mesh: object
    replicated: object
    num_classes: int
    num_bins: int
    eval_batch_size: int
    population: int
    workdir: str


def evaluator_class(type_name: str):
    """The class of an evaluator type: a name of TYPES or 'package.module.Class'."""
    if type_name in TYPES:
        return TYPES[type_name]
    module, _, name = type_name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"unknown evaluator type {type_name!r}: a name of "
            f"{', '.join(TYPES)} or 'package.module.Class' ({error})."
        ) from None


def build(config, context: Context) -> dict:
    """{name: evaluator} of `config.evals`, in the config's order."""
    return {
        name: evaluator_class(options.type)(name, options, context)
        for name, options in config.evals.items()
    }
