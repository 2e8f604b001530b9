"""Training losses selected by name, all from gsc_jax.

Names (paper Table 1 and OLS): ce, entropy (CE + lambda H(S)), focal (eta), ls (alpha), ols. Any of
them gets the GSC term gamma * f_topc(K, 0, H(S)) added when gamma > 0 (`gsc_jax.with_gsc`).
"""

import dataclasses
from typing import Callable

import gsc_jax
import jax

LOSS_NAMES = ("ce", "entropy", "focal", "ls", "ols")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A loss by name plus its hyper-parameters (paper Table 1 defaults).

    Attributes:
      name: one of LOSS_NAMES.
      gsc_gamma: GSC strength gamma >= 0; 0 turns GSC off.
      gsc_top_c: number of top scores K fed to the Gaussian, 1 <= top_c <= num_classes.
      entropy_weight: lambda of the entropy baseline (0.02 in Table 1).
      focal_eta: focusing parameter eta (2 in Table 1).
      ls_alpha: label-smoothing alpha (0.1 in Table 1).
    """

    name: str = "ce"
    gsc_gamma: float = 0.0
    gsc_top_c: int = 2
    entropy_weight: float = 0.02
    focal_eta: float = 2.0
    ls_alpha: float = 0.1

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. 'focal(2)+GSC(0.02,3)'."""
        base = {"ce": "CE", "entropy": f"CE+Entropy({self.entropy_weight:g})",
                "focal": f"Focal({self.focal_eta:g})", "ls": f"CE+LS({self.ls_alpha:g})",
                "ols": "OLS"}[self.name]
        return base + (f"+GSC({self.gsc_gamma:g},{self.gsc_top_c})" if self.gsc_gamma > 0 else "")


def validate_loss_spec(spec: LossSpec, num_classes: int) -> None:
    """Raises ValueError, saying what to change, when `spec` cannot be trained with K classes."""
    if spec.name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {spec.name!r}; choose one of {', '.join(LOSS_NAMES)}.")
    if spec.gsc_gamma < 0:
        raise ValueError(f"gsc_gamma must be >= 0 (0 turns GSC off), got {spec.gsc_gamma}.")
    if not 1 <= spec.gsc_top_c <= num_classes:
        raise ValueError(
            f"gsc_top_c must be in [1, num_classes={num_classes}], got {spec.gsc_top_c}."
        )
    if spec.entropy_weight < 0 or spec.focal_eta < 0 or not 0 <= spec.ls_alpha <= 1:
        raise ValueError("need entropy_weight >= 0, focal_eta >= 0 and 0 <= ls_alpha <= 1.")


def _base_loss_fn(spec: LossSpec) -> Callable:
    """The per-example base loss `fn(logits, labels, soft_labels)` of `spec`, without GSC."""
    base = {
        "ce": gsc_jax.cross_entropy,
        "entropy": lambda lg, y, **kw: gsc_jax.entropy_regularized_cross_entropy(
            lg, y, entropy_weight=spec.entropy_weight, **kw),
        "focal": lambda lg, y, **kw: gsc_jax.focal_loss(lg, y, eta=spec.focal_eta, **kw),
        "ls": lambda lg, y, **kw: gsc_jax.label_smoothing_cross_entropy(
            lg, y, alpha=spec.ls_alpha, **kw),
        "ols": gsc_jax.online_label_smoothing_loss,
    }[spec.name]
    return base


def _call(spec: LossSpec, fn: Callable, logits, labels, soft_labels):
    if spec.name == "ols":
        return fn(logits, labels, soft_labels=soft_labels)
    return fn(logits, labels)


def make_loss_fn(spec: LossSpec) -> Callable:
    """Builds the per-example loss `fn(logits [B, K], labels [B], soft_labels [K, K] | None)`.

    The result has shape [B].

    `soft_labels` is the OLS state's matrix (`gsc_jax.ols_*`); the other losses ignore it.
    """
    base = _base_loss_fn(spec)
    if spec.gsc_gamma > 0:
        base = gsc_jax.with_gsc(base, gamma=spec.gsc_gamma, top_c=spec.gsc_top_c)

    def loss_fn(logits: jax.Array, labels: jax.Array, soft_labels=None) -> jax.Array:
        return _call(spec, base, logits, labels, soft_labels)

    return loss_fn


def make_loss_parts_fn(spec: LossSpec) -> Callable:
    """Builds `fn(logits, labels, soft_labels) -> {'base_loss': [B], 'gsc_term': [B]}`.

    The two parts of the `make_loss_fn` loss, computed separately for logging: base_loss is the
    loss without GSC (CE / entropy / focal / LS / OLS) and gsc_term the GSC term *unscaled* by
    gamma, so that loss = base_loss + gamma * gsc_term up to float rounding (the trained 'ce'+GSC
    loss is the fused `gsc_jax.gsc_loss`, these parts are computed apart). 'gsc_term' is omitted
    when gamma = 0 (GSC off: the term is neither trained nor computed).
    """
    base = _base_loss_fn(spec)

    def parts_fn(logits: jax.Array, labels: jax.Array, soft_labels=None) -> dict:
        parts = {"base_loss": _call(spec, base, logits, labels, soft_labels)}
        if spec.gsc_gamma > 0:
            parts["gsc_term"] = gsc_jax.gsc_term_fused(logits, top_c=spec.gsc_top_c)
        return parts

    return parts_fn
