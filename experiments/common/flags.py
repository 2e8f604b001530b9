"""Command-line flags every experiment shares: the loss, its hyper-parameters and the GSC term."""

from absl import flags, logging

from experiments.common import losses


def define_loss_flags(*, num_classes_help: str = "the number of classes") -> None:
    """Defines --loss, --gsc_gamma, --gsc_top_c and the base losses' hyper-parameters.

    Args:
      num_classes_help: how the help text names the upper bound of --gsc_top_c.
    """
    flags.DEFINE_string("loss", "ce", " | ".join(losses.LOSS_NAMES) + ".")
    flags.DEFINE_float("gsc_gamma", 0.0, "GSC strength gamma (0 turns GSC off).")
    flags.DEFINE_integer("gsc_top_c", 2, f"GSC top_c, 1 <= top_c <= {num_classes_help}.")
    flags.DEFINE_float("entropy_weight", 0.02, "lambda of --loss entropy.")
    flags.DEFINE_float("focal_eta", 2.0, "eta of --loss focal.")
    flags.DEFINE_float("ls_alpha", 0.1, "alpha of --loss ls.")


def loss_spec_from_flags(values: flags.FlagValues = flags.FLAGS) -> losses.LossSpec:
    """The `losses.LossSpec` that the flags of `define_loss_flags` describe."""
    return losses.LossSpec(values.loss, values.gsc_gamma, values.gsc_top_c,
                           values.entropy_weight, values.focal_eta, values.ls_alpha)


def define_run_flags() -> None:
    """Defines --stop_after_steps and --multihost, which every training command takes."""
    flags.DEFINE_integer("stop_after_steps", 0, "Checkpoint and exit after N steps (0 = off).")
    flags.DEFINE_bool("multihost", False,
                      "Call jax.distributed.initialize() (or GSC_JAX_MULTIHOST=1).")


def quiet_logging_unless_asked(values: flags.FlagValues = flags.FLAGS) -> None:
    """WARNING-level logging unless --verbosity was given (orbax logs every save at INFO)."""
    if not values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
