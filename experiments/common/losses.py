r"""Training losses by name: one registry of `{name: (function, default hyper-parameters)}`.

`REGISTRY` holds every base loss a run can train: the GSC paper's Table 1 (ce, entropy = CE +
lambda H(S), focal, ls), online label smoothing (ols) and the train-time calibration losses
(flsd53, mbls, mdca, mmce, dca, poly1), each with its `gsc_jax` (or optax) function and the
defaults of that function (the papers' and the reference code's values). A run's config holds
`config.loss.<name>.<hyper-parameter>` for every registered loss, so each one can be set with
`--config.loss.mdca.beta=5`; the label ('MDCA(5)') and the logged hyper-parameters derive from
the registry. mdca, mmce and dca are batch-level losses: their penalty couples the examples of one
call (the global batch under jit with sharded arrays), and the batch mean that `make_objective`
takes is their objective.

Any base loss gets the GSC term (Zhao et al. 2022, Eq. 9) when gamma > 0,

.. math::
    \ell(z, y) = \mathrm{base}(z, y) + \gamma\, f_{top_c}(\mathrm{Topk}(S), \mu, H(S)),

and any can be fed margin logits (GSC paper Table 5): with `config.loss.margin.name` 'arcface'
or 'cosface' the network's logits are read as s cos(theta) (a cosine classifier of scale s) and
the target's cosine gets the margin (`gsc_jax.arcface_logits` / `gsc_jax.cosface_logits`) before
the loss; the base loss and the GSC term both see the margin-adjusted, scaled logits, the tensor
CE sees (the paper does not say which tensor GSC sees; this is the reading under which GSC is
"introduced into" the margin loss). Evaluation uses the logits as the network gives them.
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

import gsc_jax


def _poly1_loss(logits, labels, *, epsilon: float, axis: int = -1, where=None):
    """Poly-1 (Leng et al. 2022), `optax.losses.poly_loss_cross_entropy` of one-hot integer labels:
    CE + epsilon (1 - S_y). Labels follow the library's rule (`gsc_jax.cross_entropy`): ids in
    [-K, K), negative ones from the end; any other id gives a NaN value and gradient row."""
    num_classes = logits.shape[axis]
    valid = (labels >= -num_classes) & (labels < num_classes)
    ids = jnp.where(labels < 0, labels + num_classes, labels)
    one_hot = jax.nn.one_hot(ids, num_classes, axis=axis, dtype=logits.dtype)
    loss = optax.losses.poly_loss_cross_entropy(
        logits, one_hot, epsilon=epsilon, axis=axis, where=where
    )
    return loss * jnp.where(valid, 1.0, jnp.nan).astype(loss.dtype)


@dataclasses.dataclass(frozen=True)
class BaseLoss:
    """A registered base loss.

    Attributes:
      fn: `fn(logits, labels, **hyper-parameters) -> [B]` per-example values.
      defaults: its hyper-parameters and their default values.
      label: a format string of the hyper-parameters, e.g. 'Focal({eta:g})'.
      reference: paper and code the defaults come from.
      stateful: the loss reads the online-label-smoothing matrix (`gsc_jax.ols_*`), passed as
        `soft_labels`.
    """

    fn: Callable
    defaults: dict
    label: str
    reference: str = ""
    stateful: bool = False


REGISTRY = {
    "ce": BaseLoss(gsc_jax.cross_entropy, {}, "CE", "softmax cross-entropy"),
    "entropy": BaseLoss(
        gsc_jax.entropy_regularized_cross_entropy,
        {"entropy_weight": 0.02},
        "CE+Entropy({entropy_weight:g})",
        "GSC paper Table 1",
    ),
    "focal": BaseLoss(
        gsc_jax.focal_loss, {"eta": 2.0}, "Focal({eta:g})", "Lin et al. 2017; GSC paper Table 1"
    ),
    "ls": BaseLoss(
        gsc_jax.label_smoothing_cross_entropy,
        {"alpha": 0.1},
        "CE+LS({alpha:g})",
        "Szegedy et al. 2016; GSC paper Table 1",
    ),
    "ols": BaseLoss(
        gsc_jax.online_label_smoothing_loss, {}, "OLS", "Zhang et al. 2021", stateful=True
    ),
    "flsd53": BaseLoss(
        gsc_jax.adaptive_focal_loss,
        {"threshold": 0.2, "eta_below": 5.0, "eta_above": 3.0},
        "FLSD-53",
        "Mukhoti et al. 2020",
    ),
    "mbls": BaseLoss(
        gsc_jax.margin_label_smoothing_loss,
        {"margin": 10.0, "alpha": 0.1},
        "MbLS({margin:g},{alpha:g})",
        "Liu et al. 2022",
    ),
    "mdca": BaseLoss(
        gsc_jax.mdca_loss, {"beta": 1.0}, "MDCA({beta:g})", "Hebbalaguppe et al. 2022"
    ),
    "mmce": BaseLoss(
        gsc_jax.mmce_loss,
        {"beta": 4.0, "weighted": True, "bandwidth": 0.4},
        "MMCE({beta:g})",
        "Kumar et al. 2018",
    ),
    "dca": BaseLoss(gsc_jax.dca_loss, {"beta": 1.0}, "DCA({beta:g})", "Liang et al. 2020"),
    "poly1": BaseLoss(_poly1_loss, {"epsilon": 2.0}, "Poly-1({epsilon:g})", "Leng et al. 2022"),
}
LOSS_NAMES = tuple(REGISTRY)
MARGINS = {"none": None, "arcface": gsc_jax.arcface_logits, "cosface": gsc_jax.cosface_logits}
MARGIN_TITLES = {"arcface": "ArcFace", "cosface": "CosFace"}
# insightface arcface_torch defaults (scale s, margin m) of each margin.
MARGIN_DEFAULTS = {"arcface": (64.0, 0.5), "cosface": (64.0, 0.4)}


def config() -> ml_collections.ConfigDict:
    """`config.loss` of the base config: the base loss, GSC, the margin, every loss's defaults."""
    c = ml_collections.ConfigDict()
    c.name = "ce"  # base loss: ce|entropy|focal|ls|ols|flsd53|mbls|mdca|mmce|dca|poly1
    c.gsc = ml_collections.ConfigDict()
    c.gsc.gamma = 0.0  # GSC strength (0 = off); the paper: 0.005-0.05, up to 2 with label noise
    c.gsc.top_c = 2  # top scores in the GSC term, 1 <= top_c <= num_classes
    c.gsc.mu = 0.0  # mean of the Gaussians (0 in the paper)
    c.margin = ml_collections.ConfigDict()
    c.margin.name = "none"  # none | arcface | cosface: margin logits s cos(theta + m) / - m
    c.margin.scale = 64.0  # s of the cosine logits
    c.margin.m = 0.5  # margin m (ArcFace 0.5 rad, CosFace 0.4)
    for name, entry in REGISTRY.items():
        c[name] = ml_collections.ConfigDict(dict(entry.defaults))
    return c


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A loss by name plus its hyper-parameters: what a training step minimises.

    Attributes:
      name: a key of `REGISTRY`.
      params: its hyper-parameters as sorted (key, value) pairs (`hyperparameters()` adds the
        defaults of those not given).
      gsc_gamma: GSC strength gamma >= 0; 0 turns GSC off.
      gsc_top_c: number of top scores K fed to the Gaussian, 1 <= top_c <= num_classes.
      gsc_mu: the Gaussians' mean (0 in the paper).
      margin: 'none', 'arcface' or 'cosface' (the logits are s cos(theta)).
      margin_scale: s.
      margin_m: the margin m (ArcFace: radians).
    """

    name: str = "ce"
    params: tuple = ()
    gsc_gamma: float = 0.0
    gsc_top_c: int = 2
    gsc_mu: float = 0.0
    margin: str = "none"
    margin_scale: float = 64.0
    margin_m: float = 0.5

    @classmethod
    def from_config(cls, loss: ml_collections.ConfigDict) -> "LossSpec":
        """The spec of `config.loss` (the chosen loss's hyper-parameters only)."""
        if loss.name not in REGISTRY:
            raise ValueError(
                f"config.loss.name: unknown loss {loss.name!r}; choose one of "
                f"{', '.join(LOSS_NAMES)}."
            )
        params = tuple(sorted(dict(loss[loss.name]).items())) if loss.name in loss else ()
        return cls(
            loss.name,
            params,
            float(loss.gsc.gamma),
            int(loss.gsc.top_c),
            float(loss.gsc.mu),
            loss.margin.name,
            float(loss.margin.scale),
            float(loss.margin.m),
        )

    @property
    def uses_gsc(self) -> bool:
        """Whether the GSC term is part of the trained loss (gamma > 0)."""
        return self.gsc_gamma > 0

    @property
    def uses_ols(self) -> bool:
        """Whether the loss needs the online-label-smoothing state (`gsc_jax.ols_*`)."""
        return REGISTRY[self.name].stateful

    def hyperparameters(self) -> dict:
        """{'name', the base loss's hyper-parameters, gsc_gamma / gsc_top_c (/ gsc_mu) when GSC is
        on, margin / margin_scale / margin_m with a margin}: two specs train the same loss iff
        these are equal."""
        out = {"name": self.name, **REGISTRY[self.name].defaults, **dict(self.params)}
        if self.uses_gsc:
            out.update(gsc_gamma=self.gsc_gamma, gsc_top_c=self.gsc_top_c)
            if self.gsc_mu:
                out["gsc_mu"] = self.gsc_mu
        if self.margin != "none":
            out.update(margin=self.margin, margin_scale=self.margin_scale, margin_m=self.margin_m)
        return out

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. 'Focal(2)+GSC(0.02,3)' or 'ArcFace(64,0.5)+GSC(...)'."""
        params = {**REGISTRY[self.name].defaults, **dict(self.params)}
        base = REGISTRY[self.name].label.format(**params)
        if self.margin != "none":
            margin = (
                f"{MARGIN_TITLES.get(self.margin, self.margin)}({self.margin_scale:g},"
                f"{self.margin_m:g})"
            )
            base = margin if self.name == "ce" else f"{margin}+{base}"
        if self.uses_gsc:
            mu = f",mu={self.gsc_mu:g}" if self.gsc_mu else ""
            base += f"+GSC({self.gsc_gamma:g},{self.gsc_top_c}{mu})"
        return base


def validate(spec: LossSpec, num_classes: int) -> None:
    """Raises ValueError, naming the config field, when `spec` cannot be trained with K classes.

    The hyper-parameters are checked by tracing the loss once (`jax.eval_shape`), so that every
    check of the `gsc_jax` function itself applies before any work starts.
    """
    if spec.name not in REGISTRY:
        raise ValueError(
            f"config.loss.name: unknown loss {spec.name!r}; choose one of {', '.join(LOSS_NAMES)}."
        )
    unknown = sorted(set(dict(spec.params)) - set(REGISTRY[spec.name].defaults))
    if unknown:
        raise ValueError(
            f"config.loss.{spec.name}: unknown hyper-parameters {unknown}; "
            f"{spec.name} takes {sorted(REGISTRY[spec.name].defaults) or 'none'}."
        )
    if not (spec.gsc_gamma >= 0 and math.isfinite(spec.gsc_gamma)):
        raise ValueError(
            f"config.loss.gsc.gamma must be a finite number >= 0 (0 turns GSC "
            f"off), got {spec.gsc_gamma}."
        )
    if not 1 <= spec.gsc_top_c <= num_classes:
        raise ValueError(
            f"config.loss.gsc.top_c must be in [1, num_classes={num_classes}], got "
            f"{spec.gsc_top_c}."
        )
    if spec.margin not in MARGINS:
        raise ValueError(
            f"config.loss.margin.name: unknown margin {spec.margin!r}; choose one "
            f"of {', '.join(MARGINS)}."
        )
    if spec.margin != "none" and spec.uses_ols:
        raise ValueError(
            "config.loss.margin.name: a margin (arcface / cosface) cannot be "
            "combined with loss 'ols'."
        )
    if spec.margin != "none" and not (spec.margin_scale > 0 and 0 <= spec.margin_m < math.pi):
        raise ValueError(
            f"config.loss.margin: need scale > 0 and 0 <= m < pi, got "
            f"{spec.margin_scale} and {spec.margin_m}."
        )
    logits = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    soft = jax.ShapeDtypeStruct((num_classes, num_classes), jnp.float32)
    try:
        jax.eval_shape(make_loss_fn(spec), logits, labels, soft if spec.uses_ols else None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config.loss.{spec.name}: {error}") from None


def _training_logits(spec: LossSpec, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The logits the loss sees: with a margin, s cos(theta) with the target's margin added
    (`gsc_jax.arcface_logits` / `cosface_logits` of cos(theta) = logits / s); else `logits`."""
    if spec.margin == "none":
        return logits
    return MARGINS[spec.margin](
        logits / spec.margin_scale, labels, scale=spec.margin_scale, margin=spec.margin_m
    )


def _base_loss_fn(spec: LossSpec) -> Callable:
    """The per-example base loss `fn(logits, labels, **kw)` of `spec` with its hyper-parameters."""
    entry = REGISTRY[spec.name]
    params = {**entry.defaults, **dict(spec.params)}
    return functools.partial(entry.fn, **params) if params else entry.fn


def _call(spec: LossSpec, fn: Callable, logits, labels, soft_labels):
    if spec.uses_ols:
        return fn(logits, labels, soft_labels=soft_labels)
    return fn(logits, labels)


def _gsc_term(spec: LossSpec, logits: jax.Array) -> jax.Array:
    """The per-example GSC term of `spec` (its top_c and mu), unscaled by gamma."""
    return gsc_jax.gsc_term(logits, top_c=spec.gsc_top_c, mu=spec.gsc_mu)


def make_loss_fn(spec: LossSpec) -> Callable:
    """Builds the per-example loss `fn(logits [B, K], labels [B], soft_labels [K, K] | None,
    gamma=None)`.

    The result has shape [B]. `soft_labels` is the OLS state's matrix (`gsc_jax.ols_*`); the
    other losses ignore it. With GSC on, the base loss goes through `gsc_jax.with_gsc` (for 'ce'
    that is the fused `gsc_jax.gsc_loss`); `gamma`, when given, replaces `spec.gsc_gamma` and may
    be traced (a population of strengths trained together).
    """
    base = _base_loss_fn(spec)  # gsc_jax.cross_entropy itself for 'ce': with_gsc fuses it

    def loss_fn(logits: jax.Array, labels: jax.Array, soft_labels=None, gamma=None) -> jax.Array:
        fn = base
        if spec.uses_gsc:
            fn = gsc_jax.with_gsc(
                base,
                gamma=spec.gsc_gamma if gamma is None else gamma,
                top_c=spec.gsc_top_c,
                mu=spec.gsc_mu,
            )
        return _call(spec, fn, _training_logits(spec, logits, labels), labels, soft_labels)

    return loss_fn


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_objective(spec: LossSpec, *, with_gsc_term: bool | None = None) -> Callable:
    """Builds `objective(logits, labels, soft_labels=None, gamma=None) -> (loss, parts)` for a
    training step (`gamma` as in `make_loss_fn`).

    loss is the mean over examples of `make_loss_fn(spec)` (a scalar to differentiate); parts
    holds scalar means for logging, computed from the logits under stop_gradient (the gradient is
    that of the loss alone):

    - 'loss' and 'base_loss' (the loss without GSC; the same number when GSC is off);
    - with GSC (or `with_gsc_term`): 'gsc_term', the mean f unscaled by gamma, so that loss =
      base_loss + gamma * gsc_term up to rounding;
    - with GSC, the diagnostics a user tunes gamma with: 'gsc_weighted', the mean gamma * f, and
      'gsc_grad_ratio', the ratio of the global L2 norms of the gradients of mean(gamma * f) and
      of mean(base loss) with respect to the logits (0 where both gradients vanish).

    Logits may have any leading shape ([B, K], or [pixels, K] for segmentation); labels match it.
    """
    loss_fn = make_loss_fn(spec)
    base = _base_loss_fn(spec)
    with_gsc_term = spec.uses_gsc if with_gsc_term is None else with_gsc_term

    def objective(logits: jax.Array, labels: jax.Array, soft_labels=None, gamma=None):
        gamma = spec.gsc_gamma if gamma is None else gamma
        loss = jnp.mean(loss_fn(logits, labels, soft_labels, gamma))
        parts = {"loss": loss, "base_loss": loss}
        frozen = jax.lax.stop_gradient(logits)
        if not with_gsc_term:
            return loss, parts
        margin_logits = lambda z: _training_logits(spec, z, labels)  # noqa: E731
        term_mean = lambda z: jnp.mean(_gsc_term(spec, margin_logits(z)))  # noqa: E731
        if not spec.uses_gsc:  # a baseline's GSC value, for comparison
            parts["gsc_term"] = term_mean(frozen)
            return loss, parts
        base_mean = lambda z: jnp.mean(  # noqa: E731
            _call(spec, base, margin_logits(z), labels, soft_labels)
        )
        base_value, base_grad = jax.value_and_grad(base_mean)(frozen)
        term, term_grad = jax.value_and_grad(term_mean)(frozen)
        base_norm = _global_norm(base_grad)
        gsc_norm = gamma * _global_norm(term_grad)
        parts.update(
            base_loss=base_value,
            gsc_term=term,
            gsc_weighted=gamma * term,
            gsc_grad_ratio=jnp.where(gsc_norm == 0, 0.0, gsc_norm / jnp.maximum(base_norm, 1e-30)),
        )
        return loss, parts

    return objective
