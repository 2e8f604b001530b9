"""The classification evaluators: top-1, top-5, NLL, the ECE family, AURC, reliability data.

Evaluation sums masked per-batch statistics, so that a split padded to whole batches is weighted
exactly, and turns them into fractions once at the end:

    sums = batch_sums(logits, labels, example_mask=mask)     # jit / vmap / sharded
    sums = add(sums, batch_sums(...))                        # over batches
    summary = finalize(jax.device_get(sums))                 # plain Python numbers

`Classification` does this over a data source's evaluation batches, one jitted accumulation per
batch; `Multiview` first averages the logits over the views of each example (TenCrop, clips x
crops of a video). Calibration follows Guo et al. (2017): 15 equal-width confidence bins
(`gsc_jax.metrics.calibration_stats`); the integer statistics add up exactly over batches,
devices and hosts.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import report
from gsc_jax import metrics

NUM_BINS = 15
TOP_K = 5


FINE_BINS = metrics.ADAPTIVE_FINE_BINS  # histogram of smooth ECE, fine AURC
EXTRA_METRICS = ("confusion", "classwise_ece", "fine_bins", "brier")


def batch_sums(
    logits: jax.Array,
    labels: jax.Array,
    *,
    example_mask: jax.Array | None = None,
    num_bins: int = NUM_BINS,
    confusion: bool = False,
    extra: tuple = (),
) -> dict:
    """Sums of one batch's statistics over the examples where `example_mask` is True.

    Args:
      logits: float [B, K].
      labels: int [B].
      example_mask: bool [B]; False marks padding. Default: every example counts.
      num_bins: calibration bins.
      confusion: also count the confusion matrix.

    Returns:
      A dict of scalars 'count' (examples), 'correct1' and 'correct5' (top-1 / top-min(5, K) hits),
      'nll' (sum of -log softmax(logits)_y), 'nonfinite' (examples with a NaN or infinite logit;
      never counted as hits, and they make 'nll' non-finite), and 'calib' (the
      `gsc_jax.metrics.CalibrationStats` of softmax(logits)); with `confusion`, also 'confusion',
      int32 [K, K]: [i, j] counts the examples of label i whose top-1 class is j (examples with a
      non-finite logit, or a label outside [0, K), are not counted); `extra` (names of
      EXTRA_METRICS) adds 'fine' (calibration statistics on FINE_BINS bins) for 'fine_bins',
      'classwise' (`metrics.classwise_calibration_stats`) for 'classwise_ece' and 'brier' (the
      masked sum of `metrics.brier_score`) for 'brier'.
    """
    logits = logits.astype(jnp.float32)
    mask = jnp.ones(labels.shape, bool) if example_mask is None else jnp.asarray(example_mask, bool)
    weight = mask.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    hit_weight = weight * finite
    k = min(TOP_K, logits.shape[-1])
    nll = metrics.negative_log_likelihood(logits, labels)
    extras = {}
    if confusion:
        num_classes = logits.shape[-1]
        counted = mask & finite & (labels >= 0) & (labels < num_classes)
        extras["confusion"] = (
            jnp.zeros((num_classes, num_classes), jnp.int32)
            .at[jnp.where(counted, labels, 0), jnp.argmax(logits, axis=-1)]
            .add(counted.astype(jnp.int32))
        )
    probs = jax.nn.softmax(logits)
    if "fine_bins" in extra:
        extras["fine"] = metrics.calibration_stats(
            probs, labels, num_bins=FINE_BINS, example_mask=mask
        )
    if "classwise_ece" in extra:
        extras["classwise"] = metrics.classwise_calibration_stats(
            probs, labels, num_bins=num_bins, example_mask=mask
        )
    if "brier" in extra:
        extras["brier"] = jnp.sum(jnp.where(mask, metrics.brier_score(probs, labels), 0.0))
    return {
        **extras,
        "count": jnp.sum(weight),
        "correct1": jnp.sum(metrics.top_k_accuracy(logits, labels, k=1) * hit_weight),
        "correct5": jnp.sum(metrics.top_k_accuracy(logits, labels, k=k) * hit_weight),
        "nll": jnp.sum(jnp.where(mask, nll, 0.0)),
        "nonfinite": jnp.sum(weight * ~finite),
        "calib": metrics.calibration_stats(probs, labels, num_bins=num_bins, example_mask=mask),
    }


def add(a: dict, b: dict) -> dict:
    """Sums of two sets of examples (exact for the integer calibration statistics)."""
    return jax.tree.map(jnp.add, a, b)


def zeros(
    num_classes: int, num_bins: int = NUM_BINS, confusion: bool = False, extra: tuple = ()
) -> dict:
    """The sums of no examples, in `batch_sums`' structure."""
    shapes = jax.eval_shape(
        functools.partial(batch_sums, num_bins=num_bins, confusion=confusion, extra=extra),
        jax.ShapeDtypeStruct((1, num_classes), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.int32),
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def finalize(sums: dict) -> dict:
    """Turns (host) sums into the summary: plain Python numbers and lists, ready for JSON.

    Returns:
      {'count': int, 'top1', 'top5', 'nll', 'ece': fractions (NaN for no examples; 'nll' and 'ece'
      are NaN when an example had a non-finite logit), 'nonfinite': int, 'reliability': dict of
      per-bin lists bin_lower, bin_upper, count, accuracy, confidence}, 'aurc' and
      'risk_coverage' (the area under the risk-coverage curve and the curve's lists threshold,
      coverage, risk, at the resolution of the confidence bins, or of the FINE_BINS histogram
      when the sums hold one); with the sums' extras also 'confusion' (K lists of K ints) and
      'per_class_accuracy' (K fractions, the diagonal over the row sums; NaN for a class without
      examples), 'smooth_ece' (Blasiok & Nakkiran 2023, on the fine histogram), 'classwise_ece'
      and 'brier' (the mean Brier score).
    """
    n = float(sums["count"])
    mean = lambda key: float(sums[key]) / n if n > 0 else float("nan")  # noqa: E731
    out = {}
    if "confusion" in sums:
        confusion = np.asarray(sums["confusion"], np.int64)
        rows = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(rows > 0, np.diag(confusion) / np.maximum(rows, 1), np.nan)
        out = {"confusion": confusion.tolist(), "per_class_accuracy": per_class.tolist()}
    risk_stats = sums.get("fine", sums["calib"])
    if "fine" in sums:
        out["smooth_ece"] = float(
            metrics.smooth_calibration_error_from_stats(sums["fine"])["smooth_ece"]
        )
    if "classwise" in sums:
        out["classwise_ece"] = float(
            metrics.classwise_calibration_error_from_stats(sums["classwise"])
        )
    if "brier" in sums:
        out["brier"] = mean("brier")
    return {
        **out,
        "count": int(round(n)),
        "top1": mean("correct1"),
        "top5": mean("correct5"),
        "nll": mean("nll"),
        "ece": float(metrics.expected_calibration_error_from_stats(sums["calib"])),
        "nonfinite": int(round(float(sums["nonfinite"]))),
        "reliability": {
            k: np.asarray(v).tolist() for k, v in metrics.reliability_diagram(sums["calib"]).items()
        },
        "aurc": float(metrics.area_under_risk_coverage_from_stats(risk_stats)),
        "risk_coverage": {
            k: np.asarray(v).tolist()
            for k, v in metrics.risk_coverage_curve_from_stats(risk_stats).items()
        },
    }


DETAILS = ("reliability", "risk_coverage", "confusion", "per_class_accuracy")


class Classification:
    """Classification metrics of one split: `run(state)` sums every evaluation batch exactly.

    Config (`config.evals.<name>`): type 'classification', split (a split of the data source;
    default: the evaluator's name), metrics (extra metric families of EXTRA_METRICS, default
    none). Scalars: top1, top5, nll, ece, aurc, nonfinite and the extras' (classwise_ece,
    smooth_ece, brier); details for summary.json: reliability, risk_coverage (and confusion,
    per_class_accuracy). `write` draws <name>_reliability.png and <name>_risk_coverage.png (and
    <name>_confusion.png). In a population run every scalar is a list over the members and the
    details pool the members' statistics (the integer sums add exactly).
    """

    def __init__(self, name: str, options, context):
        self.name, self.context = name, context
        self.split = options.get("split", name)
        if self.split not in context.source.splits:
            raise ValueError(
                f"config.evals.{name}.split: {self.split!r} is not a split of this "
                f"data source ({', '.join(context.source.splits)})."
            )
        extra = tuple(options.get("metrics", ()))
        unknown = sorted(set(extra) - set(EXTRA_METRICS))
        if unknown:
            raise ValueError(
                f"config.evals.{name}.metrics: unknown {unknown}; choose from "
                f"{', '.join(EXTRA_METRICS)}."
            )
        self.confusion = "confusion" in extra
        self.extra = tuple(m for m in extra if m != "confusion")
        self._accumulate = None

    def logits_of(self, state, images):
        """float32 logits [B, K] of a batch (in a population run: [P, B, K])."""
        return self.context.logits(state, images)

    def batch_sums(self, state, batch) -> dict:
        """The sums of one batch (`batch_sums`; vmapped over the members of a population)."""
        sums = functools.partial(
            batch_sums, num_bins=self.context.num_bins, confusion=self.confusion, extra=self.extra
        )
        logits = self.logits_of(state, batch["image"])
        if self.context.population:
            return jax.vmap(lambda z: sums(z, batch["label"], example_mask=batch["mask"]))(logits)
        return sums(logits, batch["label"], example_mask=batch["mask"])

    def sums(self, state) -> dict:
        """Host sums over every evaluation batch of the split."""
        ctx = self.context
        if self._accumulate is None:
            first = next(
                iter(
                    ctx.source.eval_batches(
                        self.split, batch_size=ctx.eval_batch_size, mesh=ctx.mesh
                    )
                )
            )
            shapes = jax.eval_shape(self.batch_sums, state, first)
            self._init = jax.jit(
                lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                out_shardings=ctx.replicated,
            )
            self._accumulate = jax.jit(
                lambda total, st, b: add(total, self.batch_sums(st, b)), donate_argnums=0
            )
        total = self._init()
        for batch in ctx.source.eval_batches(
            self.split, batch_size=ctx.eval_batch_size, mesh=ctx.mesh
        ):
            total = self._accumulate(total, state, batch)
        return jax.device_get(total)

    def finalize(self, sums: dict) -> dict:
        """The metrics of (one member's) host sums: `finalize`."""
        return finalize(sums)

    def run(self, state) -> tuple:
        """(scalars, details) of the state on the split (see the class docstring)."""
        sums = self.sums(state)
        if not self.context.population:
            out = self.finalize(sums)
            return (
                {k: v for k, v in out.items() if k not in DETAILS},
                {k: out[k] for k in DETAILS if k in out},
            )
        members = [
            self.finalize(jax.tree.map(lambda a, i=i: a[i], sums))
            for i in range(self.context.population)
        ]
        pooled = self.finalize(jax.tree.map(lambda a: np.sum(a, axis=0), sums))
        scalars = {k: [m[k] for m in members] for k in members[0] if k not in DETAILS}
        details = {k: pooled[k] for k in DETAILS if k in pooled}
        details["pooled"] = {k: v for k, v in pooled.items() if k not in DETAILS}
        return scalars, details

    def write(self, scalars: dict, details: dict, workdir: str, title: str) -> None:
        """The final state's figures: reliability diagram, risk-coverage curve, confusion."""
        ece = details.get("pooled", scalars)["ece"]
        pooled = f" ({self.context.population} seeds pooled)" if self.context.population else ""
        report.plot_reliability(
            details["reliability"],
            os.path.join(workdir, f"{self.name}_reliability.png"),
            f"{title}: {self.name}{pooled}",
            ece=ece,
        )
        report.plot_risk_coverage(
            details["risk_coverage"],
            os.path.join(workdir, f"{self.name}_risk_coverage.png"),
            f"{title}: {self.name}{pooled}",
        )
        if "confusion" in details:
            report.plot_confusion(
                details["confusion"],
                self.context.source.class_names,
                os.path.join(workdir, f"{self.name}_confusion.png"),
                f"{title}: {self.name}, final model (% of each label)",
            )


class Multiview(Classification):
    """Classification of examples evaluated as V views: logits averaged over the views.

    The split's batches carry images [B, V, ...] (TenCrop of a face, clips x crops of a video):
    every view goes through the model and an example's logits are the mean of its V views'. Besides
    the Classification scalars of the averaged logits it reports view_top1, the top-1 accuracy of
    the single views (the clip-level accuracy of a video).
    """

    def view_logits(self, state, images):
        """float32 logits [(P,) B, V, K] of every view."""
        b, v = images.shape[:2]
        logits = self.context.logits(state, images.reshape(b * v, *images.shape[2:]))
        return logits.reshape(*logits.shape[:-2], b, v, logits.shape[-1])

    def logits_of(self, state, images):
        return jnp.mean(self.view_logits(state, images), axis=-2)

    def batch_sums(self, state, batch) -> dict:
        sums = super().batch_sums(state, batch)
        logits = self.view_logits(state, batch["image"])
        labels = jnp.broadcast_to(batch["label"][:, None], logits.shape[-3:-1])
        weight = jnp.broadcast_to(batch["mask"][:, None], labels.shape).astype(jnp.float32)
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        hits = metrics.top_k_accuracy(logits, labels, k=1) * weight * finite
        return {
            **sums,
            "view_correct1": jnp.sum(hits, axis=(-2, -1)),
            "view_count": jnp.broadcast_to(jnp.sum(weight), hits.shape[:-2]),
        }

    def finalize(self, sums: dict) -> dict:
        sums = dict(sums)
        hits, count = float(sums.pop("view_correct1")), float(sums.pop("view_count"))
        return {**finalize(sums), "view_top1": hits / count if count else float("nan")}
