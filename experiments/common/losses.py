r"""Training losses by name, from gsc_jax (Poly-1 from optax), with the parts that are logged.

Names (GSC paper Table 1, and online label smoothing): ce, entropy (CE + lambda H(S)), focal (eta),
ls (alpha), ols. The train-time calibration losses, at the library's defaults (their
hyper-parameters are fixed here, `CALIBRATION_LOSS_DEFAULTS`): flsd53
(`gsc_jax.adaptive_focal_loss`, Mukhoti et al. 2020), mbls (`gsc_jax.margin_label_smoothing_loss`,
margin 10, alpha 0.1; Liu et al. 2022), mdca (`gsc_jax.mdca_loss`, beta 1; Hebbalaguppe et al.
2022), mmce (`gsc_jax.mmce_loss`, weighted, beta 4; Kumar et al. 2018), dca (`gsc_jax.dca_loss`,
beta 1; Liang et al. 2020) and poly1 (`optax.losses.poly_loss_cross_entropy`, epsilon 2; Leng et
al. 2022). mdca, mmce and dca are batch-level losses: their penalty couples the examples the loss
sees in one call (the global batch under jit with sharded arrays, every pixel of the batch for
segmentation), and the batch mean that `make_objective` takes is their objective. Any of them gets
the GSC term added when gamma > 0 (Zhao et al. 2022, Eq. 9):

.. math::
    \ell(z, y) = \mathrm{base}(z, y) + \gamma\, f_{top_c}(\mathrm{Topk}(S), 0, H(S))

Face recognition (GSC paper Table 5) adds an additive angular or cosine margin to the target
logit before the loss (`LossSpec.margin`: 'arcface' or 'cosface', `gsc_jax.arcface_logits` /
`gsc_jax.cosface_logits`). The network's logits are then s·cos θ (a cosine classifier with scale
s = `margin_scale`); in training the target's cosine gets the margin, and the base loss and the GSC
term both see the margin-adjusted, scaled logits, the same tensor CE sees (the paper does not say
which tensor GSC sees; this is the reading under which GSC is "introduced into" the margin loss).
Evaluation uses the logits as the network gives them, without margin.

`LossSpec` is the one description of a loss: `LossSpec.uses_gsc` says whether the GSC term is on,
`make_objective` builds what a training step minimises together with the parts it logs.
"""

import dataclasses
import functools
import math
from typing import Callable

import gsc_jax
import jax
import jax.numpy as jnp
import optax

LOSS_NAMES = ("ce", "entropy", "focal", "ls", "ols", "flsd53", "mbls", "mdca", "mmce", "dca",
              "poly1")
MARGINS = ("none", "arcface", "cosface")
# insightface arcface_torch defaults (scale s, margin m) of each margin.
MARGIN_DEFAULTS = {"arcface": (64.0, 0.5), "cosface": (64.0, 0.4)}
# The hyper-parameter each base loss reads (None: it has none).
_BASE_HYPERPARAMETER = {"ce": None, "entropy": "entropy_weight", "focal": "focal_eta",
                        "ls": "ls_alpha", "ols": None}
# The calibration losses' hyper-parameters: the defaults of their `gsc_jax` functions (the papers'
# and reference code's). Passed explicitly, and reported by `LossSpec.hyperparameters`.
CALIBRATION_LOSS_DEFAULTS = {
    "flsd53": {"threshold": 0.2, "eta_below": 5.0, "eta_above": 3.0},
    "mbls": {"margin": 10.0, "alpha": 0.1},
    "mdca": {"beta": 1.0},
    "mmce": {"beta": 4.0, "weighted": True, "bandwidth": 0.4},
    "dca": {"beta": 1.0},
    "poly1": {"epsilon": 2.0},
}


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A loss by name plus its hyper-parameters (paper Table 1 defaults).

    Attributes:
      name: one of LOSS_NAMES; the calibration losses (flsd53, mbls, mdca, mmce, dca, poly1) take
        their hyper-parameters from `CALIBRATION_LOSS_DEFAULTS`.
      gsc_gamma: GSC strength gamma >= 0; 0 turns GSC off.
      gsc_top_c: number of top scores K fed to the Gaussian, 1 <= top_c <= num_classes.
      entropy_weight: lambda of the entropy baseline (0.02 in Table 1).
      focal_eta: focusing parameter eta (2 in Table 1).
      ls_alpha: label-smoothing alpha (0.1 in Table 1).
      margin: one of MARGINS; 'arcface' / 'cosface' read the logits as s·cos θ and add the
        margin to the target before the loss (see the module docstring).
      margin_scale: s, the scale of the cosine logits (64 in insightface).
      margin_m: the margin m (ArcFace: radians, 0.5; CosFace: 0.4).
    """

    name: str = "ce"
    gsc_gamma: float = 0.0
    gsc_top_c: int = 2
    entropy_weight: float = 0.02
    focal_eta: float = 2.0
    ls_alpha: float = 0.1
    margin: str = "none"
    margin_scale: float = 64.0
    margin_m: float = 0.5

    @property
    def uses_gsc(self) -> bool:
        """Whether the GSC term is part of the trained loss (gamma > 0)."""
        return self.gsc_gamma > 0

    @property
    def uses_ols(self) -> bool:
        """Whether the loss needs the online-label-smoothing state (`gsc_jax.ols_*`)."""
        return self.name == "ols"

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. 'Focal(2)+GSC(0.02,3)'."""
        fixed = CALIBRATION_LOSS_DEFAULTS
        base = {"ce": "CE", "entropy": f"CE+Entropy({self.entropy_weight:g})",
                "focal": f"Focal({self.focal_eta:g})", "ls": f"CE+LS({self.ls_alpha:g})",
                "ols": "OLS", "flsd53": "FLSD-53",
                "mbls": f"MbLS({fixed['mbls']['margin']:g},{fixed['mbls']['alpha']:g})",
                "mdca": f"MDCA({fixed['mdca']['beta']:g})",
                "mmce": f"MMCE({fixed['mmce']['beta']:g})",
                "dca": f"DCA({fixed['dca']['beta']:g})",
                "poly1": f"Poly-1({fixed['poly1']['epsilon']:g})"}[self.name]
        if self.margin != "none":
            margin = {"arcface": "ArcFace", "cosface": "CosFace"}.get(self.margin, self.margin)
            margin = f"{margin}({self.margin_scale:g},{self.margin_m:g})"
            base = margin if self.name == "ce" else f"{margin}+{base}"
        return base + (f"+GSC({self.gsc_gamma:g},{self.gsc_top_c})" if self.uses_gsc else "")

    def hyperparameters(self) -> dict:
        """The fields that change the trained loss: the name, its own hyper-parameter (a
        calibration loss's fixed ones as '<name>_<parameter>', e.g. 'mdca_beta'), and
        gsc_gamma / gsc_top_c when GSC is on. Two specs train the same loss iff these are equal."""
        out = {"name": self.name}
        own = _BASE_HYPERPARAMETER.get(self.name)
        if own is not None:
            out[own] = getattr(self, own)
        for key, value in CALIBRATION_LOSS_DEFAULTS.get(self.name, {}).items():
            out[f"{self.name}_{key}"] = value
        if self.uses_gsc:
            out.update(gsc_gamma=self.gsc_gamma, gsc_top_c=self.gsc_top_c)
        if self.margin != "none":
            out.update(margin=self.margin, margin_scale=self.margin_scale,
                       margin_m=self.margin_m)
        return out


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
    if spec.margin not in MARGINS:
        raise ValueError(f"unknown margin {spec.margin!r}; choose one of {', '.join(MARGINS)}.")
    if spec.margin != "none" and spec.uses_ols:
        raise ValueError("a margin (arcface / cosface) cannot be combined with loss 'ols'.")
    if spec.margin != "none" and not (spec.margin_scale > 0 and 0 <= spec.margin_m < math.pi):
        raise ValueError(f"need margin_scale > 0 and 0 <= margin_m < pi, got "
                         f"{spec.margin_scale} and {spec.margin_m}.")


def _training_logits(spec: LossSpec, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The logits the loss sees: with a margin, s·cos θ with the target's margin added
    (`gsc_jax.arcface_logits` / `cosface_logits` of cos θ = logits / s); otherwise `logits`."""
    if spec.margin == "none":
        return logits
    margin_fn = {"arcface": gsc_jax.arcface_logits, "cosface": gsc_jax.cosface_logits}[spec.margin]
    return margin_fn(logits / spec.margin_scale, labels, scale=spec.margin_scale,
                     margin=spec.margin_m)


def _base_loss_fn(spec: LossSpec) -> Callable:
    """The per-example base loss `fn(logits, labels, **kw)` of `spec`, without GSC."""
    fixed = CALIBRATION_LOSS_DEFAULTS
    return {
        "ce": gsc_jax.cross_entropy,
        "entropy": lambda lg, y, **kw: gsc_jax.entropy_regularized_cross_entropy(
            lg, y, entropy_weight=spec.entropy_weight, **kw),
        "focal": lambda lg, y, **kw: gsc_jax.focal_loss(lg, y, eta=spec.focal_eta, **kw),
        "ls": lambda lg, y, **kw: gsc_jax.label_smoothing_cross_entropy(
            lg, y, alpha=spec.ls_alpha, **kw),
        "ols": gsc_jax.online_label_smoothing_loss,
        "flsd53": functools.partial(gsc_jax.adaptive_focal_loss, **fixed["flsd53"]),
        "mbls": functools.partial(gsc_jax.margin_label_smoothing_loss, **fixed["mbls"]),
        "mdca": functools.partial(gsc_jax.mdca_loss, **fixed["mdca"]),
        "mmce": functools.partial(gsc_jax.mmce_loss, **fixed["mmce"]),
        "dca": functools.partial(gsc_jax.dca_loss, **fixed["dca"]),
        "poly1": _poly1_loss,
    }[spec.name]


def _poly1_loss(logits: jax.Array, labels: jax.Array, *, axis: int = -1, where=None) -> jax.Array:
    """Poly-1 (Leng et al. 2022), `optax.losses.poly_loss_cross_entropy` of one-hot integer labels:
    CE + epsilon (1 - S_y), epsilon from `CALIBRATION_LOSS_DEFAULTS`. Labels follow the library's
    rule (`gsc_jax.cross_entropy`): ids in [-K, K), negative ones from the end; any other id gives
    a NaN value and gradient row."""
    num_classes = logits.shape[axis]
    valid = (labels >= -num_classes) & (labels < num_classes)
    ids = jnp.where(labels < 0, labels + num_classes, labels)
    one_hot = jax.nn.one_hot(ids, num_classes, axis=axis, dtype=logits.dtype)
    loss = optax.losses.poly_loss_cross_entropy(
        logits, one_hot, epsilon=CALIBRATION_LOSS_DEFAULTS["poly1"]["epsilon"], axis=axis,
        where=where)
    return loss * jnp.where(valid, 1.0, jnp.nan).astype(loss.dtype)


def _call(spec: LossSpec, fn: Callable, logits, labels, soft_labels):
    if spec.uses_ols:
        return fn(logits, labels, soft_labels=soft_labels)
    return fn(logits, labels)


def make_loss_fn(spec: LossSpec) -> Callable:
    """Builds the per-example loss `fn(logits [B, K], labels [B], soft_labels [K, K] | None)`.

    The result has shape [B]. `soft_labels` is the OLS state's matrix (`gsc_jax.ols_*`); the
    other losses ignore it. With GSC on, the base loss goes through `gsc_jax.with_gsc` (for 'ce'
    that is the fused `gsc_jax.gsc_loss`).
    """
    base = _base_loss_fn(spec)
    if spec.uses_gsc:
        base = gsc_jax.with_gsc(base, gamma=spec.gsc_gamma, top_c=spec.gsc_top_c)

    def loss_fn(logits: jax.Array, labels: jax.Array, soft_labels=None) -> jax.Array:
        return _call(spec, base, _training_logits(spec, logits, labels), labels, soft_labels)

    return loss_fn


def make_loss_parts_fn(spec: LossSpec, *, with_gsc_term: bool | None = None) -> Callable:
    """Builds `fn(logits, labels, soft_labels) -> {'base_loss': [B], 'gsc_term': [B]}`.

    The two parts of the `make_loss_fn` loss, computed separately for logging: base_loss is the
    loss without GSC (CE / entropy / focal / LS / OLS, or a calibration loss with its own
    penalty) and gsc_term the GSC term *unscaled* by
    gamma, so that loss = base_loss + gamma * gsc_term up to float rounding (the trained 'ce'+GSC
    loss is the fused `gsc_jax.gsc_loss`, these parts are computed apart).

    Args:
      spec: the loss.
      with_gsc_term: whether 'gsc_term' is computed; default `spec.uses_gsc`. True also reports
        the term of a loss without GSC (a baseline's GSC value, for comparison).
    """
    base = _base_loss_fn(spec)
    with_gsc_term = spec.uses_gsc if with_gsc_term is None else with_gsc_term

    def parts_fn(logits: jax.Array, labels: jax.Array, soft_labels=None) -> dict:
        logits = _training_logits(spec, logits, labels)
        parts = {"base_loss": _call(spec, base, logits, labels, soft_labels)}
        if with_gsc_term:
            parts["gsc_term"] = _gsc_term(spec, logits)
        return parts

    return parts_fn


def _gsc_term(spec: LossSpec, logits: jax.Array) -> jax.Array:
    """The per-example GSC term of `spec`'s top_c, unscaled by gamma."""
    return gsc_jax.gsc_term(logits, top_c=spec.gsc_top_c)


def make_objective(spec: LossSpec, *, with_gsc_term: bool | None = None) -> Callable:
    """Builds `objective(logits, labels, soft_labels=None) -> (loss, parts)` for a training step.

    loss is the mean over examples of `make_loss_fn(spec)` (a scalar to differentiate); parts
    holds scalar means for logging: 'loss', 'base_loss' and, when `with_gsc_term` (default
    `spec.uses_gsc`), 'gsc_term' (unscaled by gamma). The parts come from the logits under
    stop_gradient, so the gradient is that of the loss alone. Without GSC the base loss is the
    loss itself and is not computed twice.

    Logits may have any leading shape ([B, K], or [pixels, K] for segmentation); labels match it.
    """
    loss_fn = make_loss_fn(spec)
    parts_fn = make_loss_parts_fn(spec, with_gsc_term=with_gsc_term)
    with_gsc_term = spec.uses_gsc if with_gsc_term is None else with_gsc_term

    def objective(logits: jax.Array, labels: jax.Array, soft_labels=None):
        loss = jnp.mean(loss_fn(logits, labels, soft_labels))
        parts = {"loss": loss, "base_loss": loss}
        frozen = jax.lax.stop_gradient(logits)
        if spec.uses_gsc:  # the trained loss mixes both parts: compute them apart
            parts.update(jax.tree.map(jnp.mean, parts_fn(frozen, labels, soft_labels)))
        elif with_gsc_term:  # the loss is the base loss; only the term is extra
            parts["gsc_term"] = jnp.mean(_gsc_term(spec, _training_logits(spec, frozen, labels)))
        return loss, parts

    return objective
