"""The base config every run extends, its validation, and the identity a resume must match.

A run is an `ml_collections.ConfigDict` (the Flax examples' and big_vision's config-as-code): an
experiment's `configs/<recipe>.py` has `get_config()` that starts from `base_config()` and sets
its task, data, model, optimiser and evaluators; any field can be overridden on the command line
(`--config.loss.gsc.gamma=0.02`). `validate` checks the shared fields, each message naming the
field; a task checks its own `data` and `model` fields with the helpers here (`check`).

The whole config, minus the fields listed in `config.resumable` (the epoch count, the run
controls, the evaluators), is the run's identity (`identity`): resuming a workdir with any other
setting is refused, so no field can be forgotten.
"""

import importlib
import importlib.util
import math
import re

import ml_collections

from experiments.common import losses

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine_per_epoch", "onecycle_linear")


def base_config() -> ml_collections.ConfigDict:
    """The fields every run has; an experiment's config overrides them (and fills data, model)."""
    config = ml_collections.ConfigDict()
    config.task = ""  # module with the experiment's task: make_source(config), make_model(...)
    config.seed = 0  # seeds init, shuffling, augmentation and dropout (experiments.common.rng)
    config.epochs = 1  # training epochs (may grow on resume: the schedule is laid out anew)
    config.batch_size = 128  # global train batch, split over the devices
    config.eval_batch_size = 256  # global evaluation batch (padded and masked)
    config.bf16 = False  # bfloat16 compute (parameters, loss and metrics stay float32)
    config.loss = losses.config()  # base loss, GSC, margin, every loss's hyper-parameters
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # sgd | adam | adamw
    config.optimizer.learning_rate = 0.1  # base learning rate
    config.optimizer.reference_batch = 0  # if > 0: lr = learning_rate * batch_size / this
    config.optimizer.momentum = 0.9  # SGD momentum (adam: b1)
    config.optimizer.nesterov = False  # SGD Nesterov momentum
    config.optimizer.weight_decay = 0.0  # sgd/adam: coupled L2 (PyTorch); adamw: decoupled
    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "constant"  # constant | multistep | cosine_per_epoch | onecycle_linear
    config.schedule.milestones = ()  # multistep: fractions of the run where lr *= factor
    config.schedule.factor = 0.1  # multistep: the factor at each milestone
    config.schedule.round_to = "epoch"  # multistep: milestones rounded to an epoch or a step
    config.plateau = ml_collections.ConfigDict()
    config.plateau.factor = 0.0  # reduce-on-plateau factor (0 = off), stepped once per epoch
    config.plateau.patience = 5  # epochs without improvement tolerated (PyTorch's patience)
    config.plateau.metric = "val/top1"  # the evaluation metric it follows (maximised)
    config.best = ml_collections.ConfigDict()
    config.best.metric = ""  # keep the state with the best value of this metric ('' = off)
    config.data = ml_collections.ConfigDict()  # the task's data fields, and:
    config.data.mean = (0.0,)  # model input (x / 255 - mean) / std, per channel
    config.data.std = (1.0,)
    config.model = ml_collections.ConfigDict()  # the task's model fields
    config.evals = ml_collections.ConfigDict()  # evaluators: name -> {type, split, ...}
    config.num_bins = 15  # calibration bins (ECE, reliability diagram)
    config.run = ml_collections.ConfigDict()
    config.run.stop_after_steps = 0  # checkpoint and exit after N steps in this call (0 = off)
    config.run.progress = True  # progress bars
    config.run.multihost = False  # jax.distributed.initialize() (or GSC_JAX_MULTIHOST=1)
    config.run.compilation_cache = "~/.cache/gsc-jax/xla"  # XLA programs kept across runs ('' off)
    config.resumable = ("epochs", "run", "evals", "eval_batch_size", "resumable")
    return config


def classification_evals(splits=("test",), **options) -> ml_collections.ConfigDict:
    """`config.evals` with one classification evaluator per split (named after the split)."""
    return ml_collections.ConfigDict(
        {s: {"type": "classification", "split": s, **options} for s in splits}
    )


def get(config, path: str):
    """The value of the dotted field `path` ('model.width')."""
    value = config
    for key in path.split("."):
        value = value[key]
    return value


def check(config, path: str, condition, allowed: str) -> None:
    """Raises ValueError 'config.<path> must be <allowed>, got <value>.' unless
    `condition(value)`."""
    value = get(config, path)
    try:
        ok = bool(condition(value))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"config.{path} must be {allowed}, got {value!r}.")


def positive(x) -> bool:
    return not isinstance(x, bool) and x > 0 and math.isfinite(x)


def non_negative(x) -> bool:
    return not isinstance(x, bool) and x >= 0 and math.isfinite(x)


def positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def non_negative_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def one_of(*choices):
    return lambda x: x in choices


def load_task(config):
    """The task module `config.task` names (ValueError naming the field if it does not import)."""
    if not config.task:
        raise ValueError(
            "config.task must name the experiment's task module, e.g. 'experiments.cifar10.task'."
        )
    try:
        return importlib.import_module(config.task)
    except ImportError as error:
        raise ValueError(f"config.task {config.task!r} cannot be imported: {error}") from None


def validate(config, num_classes: int | None = None, evaluator_types=()) -> None:
    """Checks the shared fields before any work; the message names the field and what is allowed.

    Args:
      config: the run.
      num_classes: the data's number of classes once known (checks the loss against it).
      evaluator_types: the evaluator type names that `config.evals` may use.
    """
    check(config, "seed", lambda s: isinstance(s, int) and s >= 0, "an integer >= 0")
    for path in ("epochs", "batch_size", "eval_batch_size", "num_bins"):
        check(config, path, lambda x: isinstance(x, int) and x > 0, "a positive integer")
    check(config, "optimizer.name", one_of(*OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)}")
    check(config, "optimizer.learning_rate", positive, "a positive number")
    check(
        config,
        "optimizer.reference_batch",
        lambda x: isinstance(x, int) and x >= 0,
        "an integer >= 0 (0 = no scaling)",
    )
    check(config, "optimizer.momentum", lambda m: 0 <= m < 1, "in [0, 1)")
    check(config, "optimizer.weight_decay", non_negative, "a number >= 0")
    check(config, "schedule.name", one_of(*SCHEDULES), f"one of {', '.join(SCHEDULES)}")
    check(
        config,
        "schedule.milestones",
        lambda m: all(0 < f <= 1 for f in m) and list(m) == sorted(m),
        "increasing fractions of the run in (0, 1]",
    )
    check(config, "schedule.factor", lambda f: 0 < f <= 1, "in (0, 1]")
    check(config, "schedule.round_to", one_of("epoch", "step"), "'epoch' or 'step'")
    check(config, "plateau.factor", lambda f: 0 <= f < 1, "in [0, 1) (0 = off)")
    check(config, "plateau.patience", lambda p: isinstance(p, int) and p >= 0, "an integer >= 0")
    check(
        config,
        "run.stop_after_steps",
        lambda s: isinstance(s, int) and s >= 0,
        "an integer >= 0 (0 = off)",
    )
    if not config.evals:
        raise ValueError(
            "config.evals is empty: declare at least one evaluator, e.g. "
            "{'test': {'type': 'classification', 'split': 'test'}}."
        )
    for name, ev in config.evals.items():
        if "/" in name:
            raise ValueError(f"config.evals.{name}: evaluator names may not contain '/'.")
        if "type" not in ev:
            raise ValueError(f"config.evals.{name} needs a 'type'.")
        if evaluator_types and ev.type not in evaluator_types and "." not in ev.type:
            raise ValueError(
                f"config.evals.{name}.type must be one of "
                f"{', '.join(evaluator_types)} or 'module.Class', got {ev.type!r}."
            )
    for path in ("plateau.metric", "best.metric"):
        metric = get(config, path)
        needed = metric and (path != "plateau.metric" or config.plateau.factor > 0)
        if needed and metric.split("/")[0] not in config.evals:
            raise ValueError(
                f"config.{path} {metric!r} names no evaluator of config.evals "
                f"({', '.join(config.evals)}); use '<evaluator>/<metric>'."
            )
    if num_classes is not None:
        losses.validate(losses.LossSpec.from_config(config.loss), num_classes)


def identity(config) -> dict:
    """The config as a plain dict without the fields of `config.resumable` (dotted paths)."""
    out = config.to_dict()
    for path in config.resumable:
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return out


def apply_overrides(config, overrides: dict):
    """A copy of `config` with dotted-path overrides ('loss.gsc.gamma': 0.02) applied; a dict
    value replaces the whole sub-config (a row with another model's fields)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for path, value in overrides.items():
            *parents, leaf = path.split(".")
            node = config
            for key in parents:
                node = node[key]
            if leaf not in node:
                raise ValueError(f"override {path!r}: the config has no field {leaf!r} there.")
            node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return config


def load_module(path: str):
    """A config file (`--config FILE[:arg]`) as a module, for its get_config() and get_grid()."""
    path = path.split(":")[0]
    spec = importlib.util.spec_from_file_location("_gsc_config_" + re.sub(r"\W", "_", path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path: str, overrides: dict | None = None) -> tuple:
    """(config, grid or None) of a config file: its `get_config()` with `overrides` (dotted paths,
    as on the command line) applied, and its `get_grid()` if it has one (a table or sweep)."""
    module = load_module(path)
    config = apply_overrides(module.get_config(), overrides or {})
    return config, (module.get_grid() if hasattr(module, "get_grid") else None)
