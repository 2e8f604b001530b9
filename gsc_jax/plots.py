r"""Plots of calibration statistics: reliability diagrams with bin counts, risk-coverage curves.

Needs matplotlib (``pip install "gsc-jax[plots]"``, or ``pip install matplotlib``), imported only
when a function is called. Figures are built as ``matplotlib.figure.Figure`` objects, not through
``pyplot``: they need no display (any backend, Agg included), hold no global state and need no
closing; a notebook shows a returned figure as usual. Every function draws on a given ``ax`` or
on a new figure, and saves the figure when given a ``path``. For example::

    stats = gsc_jax.metrics.calibration_stats(probs, labels, num_bins=15)
    fig, ax, counts_ax = gsc_jax.plots.reliability_diagram(stats, path="reliability.png")
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import numpy as np

from gsc_jax import metrics

_INSTALL_HINT = (
    'gsc_jax.plots needs matplotlib: pip install "gsc-jax[plots]" (or pip install matplotlib).'
)
# Up to this many bins, each bar of a reliability diagram is labelled with its count.
_MAX_ANNOTATED_BINS = 20


def _matplotlib():
    """The ``matplotlib.figure`` and ``matplotlib.colors`` modules, or a clear ImportError."""
    try:
        from matplotlib import colors  # pylint: disable=import-outside-toplevel
        from matplotlib import figure  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return figure, colors


def _as_float(values) -> np.ndarray:
    """A float64 NumPy array; None (a non-finite number written to JSON as null) becomes NaN."""
    return np.asarray(
        [np.nan if v is None else v for v in np.asarray(values, object).ravel()], np.float64
    ).reshape(np.shape(values))


def _reliability_arrays(data) -> dict[str, np.ndarray]:
    if isinstance(data, metrics.CalibrationStats):
        data = metrics.reliability_diagram(data)
    if not isinstance(data, Mapping):
        raise TypeError(
            "`stats_or_diagram` must be CalibrationStats or the dict of "
            f"gsc_jax.metrics.reliability_diagram, got {type(data).__name__}."
        )
    keys = ("bin_lower", "bin_upper", "count", "accuracy", "confidence")
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"`stats_or_diagram` lacks the keys {missing}; expected {list(keys)}.")
    arrays = {key: _as_float(data[key]) for key in keys}
    sizes = {value.shape for value in arrays.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"The diagram's entries must be 1-D of one length, got shapes {sizes}.")
    return arrays


def _save(fig, path: Optional[str], dpi: int) -> None:
    if path is not None:
        fig.savefig(path, dpi=dpi)


def reliability_diagram(
    stats_or_diagram: Union[metrics.CalibrationStats, Mapping[str, Any]],
    ax=None,
    *,
    counts_ax=None,
    title: str = "",
    ece: Optional[float] = None,
    path: Optional[str] = None,
    dpi: int = 100,
):
    r"""Reliability diagram: per-bin accuracy against confidence, with the gap and the bin counts.

    Each non-empty bin :math:`B_m` gets a bar of height :math:`\mathrm{acc}(B_m)` and, stacked on
    it, a hatched red bar up to :math:`\mathrm{conf}(B_m)` (the gap: red above the diagonal means
    over-confident; a gap bar below the accuracy bar's top means under-confident). A perfectly
    calibrated model follows the dashed diagonal (Guo et al. 2017, Fig. 1).

    The counts are shown so that a bin of 2 examples is not read like one of 500: the bars'
    opacity grows with :math:`|B_m| / \max_j |B_j|`, and a second panel below (``counts_ax``) shows
    the histogram of counts, on a log scale when they span more than two decades. With up to 20
    bins every count is also written out, on the counts panel or, without one, on the bars. Empty
    bins are not drawn.

    Args:
      stats_or_diagram: `gsc_jax.metrics.CalibrationStats`, or the dict that
        `gsc_jax.metrics.reliability_diagram` returns (arrays, or the lists of a JSON summary where
        ``null`` stands for NaN), with ``[M]`` entries ``bin_lower``, ``bin_upper``, ``count``,
        ``accuracy``, ``confidence``.
      ax: Axes to draw the diagram on; by default a new figure with the diagram above a counts
        panel.
      counts_ax: Axes for the histogram of counts (with ``ax`` given; otherwise made with the
        figure). None with ``ax`` given: counts are shown by opacity and labels only.
      title: title of the diagram; ``ece`` (a fraction) is appended as a percentage if given.
      path: save the figure there (e.g. a ``.png``).
      dpi: resolution when saving.

    Returns:
      ``(figure, ax, counts_ax)``; ``counts_ax`` is None when there is no counts panel.
    """
    diagram = _reliability_arrays(stats_or_diagram)
    figure_module, colors = _matplotlib()
    if ax is None:
        fig = figure_module.Figure(figsize=(4.5, 5.6), layout="constrained")
        ax, counts_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        fig = ax.figure
    lower, upper = diagram["bin_lower"], diagram["bin_upper"]
    width = upper - lower
    count = np.nan_to_num(diagram["count"])
    accuracy, confidence = diagram["accuracy"], diagram["confidence"]
    usable = np.all(np.isfinite(accuracy)) and np.all(np.isfinite(confidence))
    shown = (count > 0) & np.isfinite(accuracy) & np.isfinite(confidence)
    weight = count / count.max() if count.max() > 0 else count
    opacity = 0.15 + 0.85 * weight[shown]
    ax.bar(
        lower[shown],
        accuracy[shown],
        width=width[shown],
        align="edge",
        color=[colors.to_rgba("tab:blue", a) for a in opacity],
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    ax.bar(
        lower[shown],
        confidence[shown] - accuracy[shown],
        bottom=accuracy[shown],
        width=width[shown],
        align="edge",
        color=[colors.to_rgba("tab:red", 0.5 * a) for a in opacity],
        edgecolor=colors.to_rgba("tab:red", 0.8),
        hatch="//",
        linewidth=0.6,
        label="gap to confidence",
    )
    annotate = len(count) <= _MAX_ANNOTATED_BINS
    if annotate and counts_ax is None:
        for x, w, top, n in zip(
            lower[shown], width[shown], np.maximum(accuracy, confidence)[shown], count[shown]
        ):
            ax.text(
                x + w / 2,
                min(top, 0.93) + 0.01,
                f"{int(n)}",
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90 if len(count) > 10 else 0,
            )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    if not usable:
        ax.text(
            0.5,
            0.5,
            "no usable statistics\n(invalid examples or overflow)",
            ha="center",
            va="center",
            fontsize=9,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title + (f"  ECE={100 * ece:.2f}%" if ece is not None else ""), fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    if counts_ax is not None:
        counts_ax.bar(
            lower, count, width=width, align="edge", color="gray", edgecolor="black", linewidth=0.4
        )
        positive = count[count > 0]
        log_scale = positive.size and positive.max() > 100 * positive.min()
        if log_scale:
            counts_ax.set_yscale("log")
        if annotate and positive.size:
            for x, w, n in zip(lower[count > 0], width[count > 0], positive):
                counts_ax.text(
                    x + w / 2,
                    n,
                    f"{int(n)}",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90 if len(count) > 10 else 0,
                )
            top = positive.max()
            counts_ax.set_ylim(top=top * 30 if log_scale else top * 1.5)
        counts_ax.set_xlim(0, 1)
        counts_ax.set_ylabel("count")
        counts_ax.set_xlabel("confidence")
    else:
        ax.set_xlabel("confidence")
    _save(fig, path, dpi)
    return fig, ax, counts_ax


def _risk_coverage_arrays(data):
    """``(coverage, risk, aurc)`` as NumPy arrays and a float, for the bins holding examples."""
    if isinstance(data, metrics.CalibrationStats):
        aurc = float(metrics.area_under_risk_coverage_from_stats(data))
        data = metrics.risk_coverage_curve_from_stats(data)
    elif isinstance(data, Mapping):
        aurc = None
    else:
        raise TypeError(
            "`stats_or_curve` must be CalibrationStats or the dict of "
            f"gsc_jax.metrics.risk_coverage_curve_from_stats, got {type(data).__name__}."
        )
    missing = [key for key in ("coverage", "risk") if key not in data]
    if missing:
        raise ValueError(f"`stats_or_curve` lacks the keys {missing}; expected coverage, risk.")
    coverage, risk = _as_float(data["coverage"]), _as_float(data["risk"])
    if coverage.ndim != 1 or coverage.shape != risk.shape:
        raise ValueError(
            f"coverage and risk must be 1-D of one length, got {coverage.shape}, {risk.shape}."
        )
    # coverage_m - coverage_{m+1} is the share of examples in bin m.
    share = coverage - np.append(coverage[1:], 0.0)
    if aurc is None:
        aurc = float(np.sum(share * risk))
    held = share > 0
    return coverage[held], risk[held], aurc


def risk_coverage_curve(
    stats_or_curve: Union[metrics.CalibrationStats, Mapping[str, Any]],
    ax=None,
    *,
    label: Optional[str] = None,
    title: str = "",
    path: Optional[str] = None,
    dpi: int = 100,
):
    r"""Selective risk against coverage (Geifman & El-Yaniv 2017), with the AURC in the legend.

    One point per bin holding examples: accepting the examples whose top-1 confidence reaches the
    bin's lower edge covers :math:`\mathrm{coverage}_m` of them with error rate
    :math:`\mathrm{risk}_m` (see `gsc_jax.metrics.risk_coverage_curve_from_stats`). A good
    confidence ranking gives a curve that falls towards low coverage. The AURC is
    :math:`\sum_m (\mathrm{coverage}_m - \mathrm{coverage}_{m+1})\,\mathrm{risk}_m`, equal to
    `gsc_jax.metrics.area_under_risk_coverage_from_stats`. Call again with the same ``ax`` to
    compare models.

    Args:
      stats_or_curve: `gsc_jax.metrics.CalibrationStats` (a fine histogram, e.g. 4096 bins,
        resolves the curve best) or the dict of `gsc_jax.metrics.risk_coverage_curve_from_stats`
        (``coverage`` and ``risk``, ``[M]``; lists with ``null`` for NaN are accepted).
      ax: Axes to draw on; by default a new figure.
      label: legend label of the curve; the AURC is appended.
      title: axes title.
      path: save the figure there.
      dpi: resolution when saving.

    Returns:
      ``(figure, ax)``.
    """
    coverage, risk, aurc = _risk_coverage_arrays(stats_or_curve)
    figure_module, _ = _matplotlib()
    if ax is None:
        fig = figure_module.Figure(figsize=(4.5, 3.6), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    order = np.argsort(coverage)
    name = f"AURC={aurc:.4f}" if label is None else f"{label} (AURC={aurc:.4f})"
    ax.plot(
        coverage[order],
        risk[order],
        marker="o" if coverage.size <= 30 else None,
        markersize=3,
        label=name,
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk (error rate)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path, dpi)
    return fig, ax
