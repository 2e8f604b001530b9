"""Offline quickstart: what GSC does to accuracy and calibration next to other training losses.

    python -m experiments.quickstart                    # clean labels
    python -m experiments.quickstart --label_noise 0.4  # 40 % symmetric label noise (train split)
    python -m experiments.quickstart --losses all       # every base loss, without and with GSC
    python -m experiments.quickstart --losses ce,mdca   # chosen base losses, without and with GSC

Trains a small CNN on scikit-learn's bundled 8x8 digits (1,797 real images, nothing downloaded;
stratified 70/30 train/test split), three seeds per loss. The default set is CE, CE+GSC, LS, LS+GSC,
focal and focal+GSC at the GSC paper's Table 1 hyper-parameters. `--losses all` trains every base
loss of `experiments.common.losses` but OLS (ce, entropy, focal, ls, flsd53, mbls, mdca, mmce, dca,
poly1) without and with GSC: CE, LS and focal with their Table 1 GSC settings, the others with CE's
(gamma 0.05, top_c 2); `--losses a,b` trains those base losses the same way. OLS is left out: its
soft-label matrix is training state updated every step and finalised every epoch, which this
vmapped loop does not carry.

All runs train together: one jitted `lax.scan` per epoch, vmapped over (loss, seed). On the test
split it reports accuracy, ECE (15 bins), classwise ECE (15 bins), smooth ECE (4096-bin histogram),
NLL, Brier score and AURC (4096 bins), all from `gsc_jax.metrics`, as mean +- std over seeds, and
writes under --workdir table.md, table.json, one reliability diagram per loss (pooled over seeds)
and risk_coverage.png (every loss on one axes, pooled over seeds). Budget of the default set: at
most 3 minutes on a 2-core CPU.
"""

import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from gsc_jax import metrics, plots
from tqdm import tqdm

from experiments.common import data, evaluation, losses, report
from experiments.common.layers import TorchConv, TorchDense

F = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "Output directory.")
flags.DEFINE_float("label_noise", 0.0, "Symmetric label-noise rate in [0, 1) on the train split.")
flags.DEFINE_integer("epochs", 20, "Epochs per run.")
flags.DEFINE_integer("num_seeds", 3, "Seeds per loss (trained together with vmap).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_string("losses", "default",
                    "'default' (CE, LS, focal, each without and with GSC), 'all' (every base loss "
                    "but ols, each without and with GSC) or comma-separated base losses, e.g. "
                    "'ce,mdca' (each without and with GSC).")

L = losses.LossSpec
LOSSES = (
    L("ce"), L("ce", gsc_gamma=0.05, gsc_top_c=2),
    L("ls", ls_alpha=0.1), L("ls", ls_alpha=0.1, gsc_gamma=0.03, gsc_top_c=2),
    L("focal", focal_eta=2.0), L("focal", focal_eta=2.0, gsc_gamma=0.02, gsc_top_c=3),
)
# Base losses `--losses` can select: all of losses.LOSS_NAMES but 'ols' (its state is not carried).
BASE_LOSSES = tuple(name for name in losses.LOSS_NAMES if name != "ols")
# GSC (gamma, top_c) per base loss: the GSC paper's Table 1 settings for CE, LS and focal loss;
# CE's for the losses the paper does not combine with GSC.
GSC_SETTINGS = {"ce": (0.05, 2), "ls": (0.03, 2), "focal": (0.02, 3)}
DEFAULT_GSC_SETTING = (0.05, 2)
FINE_BINS = metrics.ADAPTIVE_FINE_BINS  # histogram of smooth ECE, AURC and the risk-coverage curve
COLUMNS = ("accuracy", "ece", "classwise_ece", "smooth_ece", "nll", "brier", "aurc")


def loss_specs(selection: str) -> tuple:
    """The losses of `--losses`: 'default' (LOSSES), 'all' or comma-separated base losses.

    'all' and a list give each base loss without GSC, then with its GSC setting (`GSC_SETTINGS`,
    else `DEFAULT_GSC_SETTING`), in the order given ('all': `BASE_LOSSES`' order).

    Raises:
      ValueError: an empty or unknown name, 'ols', or a name given twice.
    """
    if selection == "default":
        return LOSSES
    names = BASE_LOSSES if selection == "all" else tuple(
        n.strip() for n in selection.split(","))
    allowed = f"'default', 'all' or comma-separated names from {', '.join(BASE_LOSSES)}"
    for name in names:
        if name == "ols":
            raise ValueError("--losses: 'ols' cannot be trained by the quickstart (its soft-label "
                             f"state is not carried by the vmapped loop); choose {allowed}.")
        if name not in BASE_LOSSES:
            raise ValueError(f"--losses: unknown loss {name!r} in {selection!r}; choose {allowed}.")
    if len(set(names)) != len(names):
        raise ValueError(f"--losses: a loss is given twice in {selection!r}.")
    specs = []
    for name in names:
        gamma, top_c = GSC_SETTINGS.get(name, DEFAULT_GSC_SETTING)
        specs += [L(name), L(name, gsc_gamma=gamma, gsc_top_c=top_c)]
    return tuple(specs)


class SmallCNN(nn.Module):
    """[B, 8, 8, 1] -> conv3x3 16 -> conv3x3/2 32 (4x4) -> dense 64 -> [B, 10]; ReLU, no norm.

    On the CPU the convolutions run as patch-matrix products (`layers.TorchConv`), which stay fast
    under vmap over seeds on XLA:CPU.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(TorchConv(16, 3, 1, 1)(x))
        x = nn.relu(TorchConv(32, 3, 2, 1)(x))
        x = nn.relu(TorchDense(64)(x.reshape(x.shape[0], -1)))
        return TorchDense(self.num_classes)(x)


def make_epoch_fn(model: nn.Module, tx, x, y, batch_size: int, specs: tuple = LOSSES):
    """Builds `epoch(params, opt_state, key, loss_index) -> (params, opt_state, mean loss)`.

    x: float32 [N, 8, 8, 1] in [0, 1]; y: int32 [N]. One epoch = lax.scan over N // B shuffled
    batches (last partial batch dropped) of Adam steps on the batch-mean of specs[loss_index]
    (`lax.switch`, so that every loss x seed run is vmapped into one compiled program). The batch
    mean is each loss's objective, the batch-level ones (MDCA, MMCE, DCA) included.
    """
    loss_fns = [losses.make_loss_fn(spec) for spec in specs]
    steps = len(y) // batch_size

    def step(carry, idx, loss_index):
        params, opt_state = carry

        def objective(p):
            logits = model.apply(p, x[idx])
            return jnp.mean(jax.lax.switch(loss_index, loss_fns, logits, y[idx]))

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def epoch(params, opt_state, key, loss_index):
        perm = jax.random.permutation(key, len(y))[:steps * batch_size].reshape(steps, -1)
        (params, opt_state), batch_losses = jax.lax.scan(
            lambda c, i: step(c, i, loss_index), (params, opt_state), perm)
        return params, opt_state, jnp.mean(batch_losses)

    return epoch


def eval_sums(logits: jax.Array, labels: jax.Array) -> dict:
    """`evaluation.batch_sums` plus the statistics of the other table columns, all sums.

    Adds 'fine' (`metrics.calibration_stats` on FINE_BINS bins: smooth ECE, AURC, risk-coverage),
    'classwise' (`metrics.classwise_calibration_stats`, 15 bins) and 'brier' (the sum of
    `metrics.brier_score`).
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32))
    return {**evaluation.batch_sums(logits, labels),
            "fine": metrics.calibration_stats(probs, labels, num_bins=FINE_BINS),
            "classwise": metrics.classwise_calibration_stats(probs, labels,
                                                             num_bins=evaluation.NUM_BINS),
            "brier": jnp.sum(metrics.brier_score(probs, labels))}


def train_all(ds: data.Dataset, num_seeds: int, epochs: int, batch_size: int,
              learning_rate: float, bar: tqdm, specs: tuple = LOSSES) -> dict:
    """Trains len(specs) x num_seeds SmallCNN runs together (vmap); returns their test sums.

    Run (loss l, seed s) is initialised and shuffled from seed s, so the losses are compared on the
    same initialisations and batch orders.

    Returns:
      `eval_sums` over the test split, every leaf with leading axes [L, S].
    """
    num_losses = len(specs)
    model, tx = SmallCNN(ds.num_classes), optax.adam(learning_rate)
    x = jnp.asarray(ds.train_images, jnp.float32) / 255.0
    y = jnp.asarray(ds.train_labels)
    loss_index = jnp.repeat(jnp.arange(num_losses), num_seeds)
    keys = jax.vmap(jax.random.key)(jnp.tile(jnp.arange(num_seeds), num_losses))
    init = jax.jit(lambda k: model.init(k, x[:1]))
    seed_params = [init(jax.random.key(seed)) for seed in range(num_seeds)]
    params = jax.tree.map(lambda *a: jnp.tile(jnp.stack(a), (num_losses,) + (1,) * a[0].ndim),
                          *seed_params)
    opt_state = jax.vmap(tx.init)(params)
    epoch_fn = jax.jit(jax.vmap(make_epoch_fn(model, tx, x, y, batch_size, specs)),
                       donate_argnums=(0, 1))
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    for e in range(epochs):
        params, opt_state, loss = epoch_fn(params, opt_state, fold(keys, e), loss_index)
        bar.set_postfix(mean_loss=f"{float(jnp.mean(loss)):.3f}")
        bar.update(1)
    xt = jnp.asarray(ds.test_images, jnp.float32) / 255.0
    yt = jnp.asarray(ds.test_labels)
    out = jax.jit(jax.vmap(lambda p: eval_sums(model.apply(p, xt), yt)))(params)
    return jax.tree.map(lambda a: np.asarray(a).reshape(num_losses, num_seeds, *a.shape[1:]),
                        jax.device_get(out))


def _metrics(sums: dict) -> dict:
    """The table's columns of one run (or of pooled runs) from its `eval_sums`, as floats."""
    summary = evaluation.finalize(sums)
    count = float(sums["count"])
    return {
        "accuracy": summary["top1"],
        "ece": summary["ece"],
        "classwise_ece": float(metrics.classwise_calibration_error_from_stats(sums["classwise"])),
        "smooth_ece": float(
            metrics.smooth_calibration_error_from_stats(sums["fine"])["smooth_ece"]),
        "nll": summary["nll"],
        "brier": float(sums["brier"]) / count if count > 0 else float("nan"),
        "aurc": float(metrics.area_under_risk_coverage_from_stats(sums["fine"])),
    }, summary


def summarize(spec, sums: dict) -> dict:
    """Mean and std over seeds of every column of COLUMNS, plus pooled reliability data.

    `sums` holds one loss's `eval_sums`, leaves with a leading seed axis. Accuracy, the calibration
    errors, Brier score and AURC are fractions; NLL is in nats. The std is the population std over
    seeds (ddof 0). 'reliability' and 'pooled_ece' pool the seeds' test predictions; 'risk_coverage'
    is the pooled `metrics.risk_coverage_curve_from_stats` on FINE_BINS bins (lists).
    """
    n_seeds = len(sums["count"])
    per_seed = [_metrics(jax.tree.map(lambda a, i=i: a[i], sums))[0] for i in range(n_seeds)]
    pooled_sums = jax.tree.map(lambda a: a.sum(0), sums)
    pooled = evaluation.finalize(pooled_sums)
    row = {"loss": spec.label, "hyperparameters": spec.hyperparameters(), "seeds": n_seeds}
    for name in COLUMNS:
        vals = np.array([s[name] for s in per_seed], np.float64)
        row[name] = {"mean": float(vals.mean()), "std": float(vals.std()),
                     "per_seed": vals.tolist()}
    row["reliability"] = pooled["reliability"]
    row["pooled_ece"] = pooled["ece"]
    curve = metrics.risk_coverage_curve_from_stats(pooled_sums["fine"])
    row["risk_coverage"] = {k: np.asarray(v).tolist() for k, v in curve.items()}
    return row


def markdown_table(rows: list, title: str) -> str:
    """Markdown table of mean +- std per loss: fractions in %, NLL in nats, Brier score as is."""
    pm = lambda r, k, s=100.0, d=2: (  # noqa: E731
        f"{s * r[k]['mean']:.{d}f} ± {s * r[k]['std']:.{d}f}")
    lines = [f"**{title}**", "",
             "| loss | accuracy % | ECE % | classwise ECE % | smooth ECE % | NLL | Brier "
             "| AURC % |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['loss']} | {pm(r, 'accuracy')} | {pm(r, 'ece')} | {pm(r, 'classwise_ece')} "
              f"| {pm(r, 'smooth_ece')} | {pm(r, 'nll', 1.0, 3)} | {pm(r, 'brier', 1.0, 3)} "
              f"| {pm(r, 'aurc')} |" for r in rows]
    return "\n".join(lines) + "\n"


def file_stem(label: str) -> str:
    """A file-name stem of a loss label, e.g. 'CE+LS(0.1)+GSC(0.03,2)' -> 'ce_ls_0.1_gsc_0.03_2'."""
    return re.sub(r"[^a-z0-9.-]+", "_", label.lower()).strip("_")


def plot_risk_coverage(rows: list, path: str, title: str) -> None:
    """Every loss's pooled risk-coverage curve on one axes (`gsc_jax.plots.risk_coverage_curve`);
    a loss and its +GSC variant share a colour, the GSC one dashed."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    bases = list(dict.fromkeys(r["hyperparameters"]["name"] for r in rows))
    colours = matplotlib.colormaps["tab10" if len(bases) <= 10 else "tab20"]
    for r in rows:
        plots.risk_coverage_curve(r["risk_coverage"], ax, label=r["loss"], title=title)
        line = ax.lines[-1]
        line.set_color(colours(bases.index(r["hyperparameters"]["name"])))
        line.set_linestyle("--" if "gsc_gamma" in r["hyperparameters"] else "-")
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=120)


def run(specs: tuple, ds: data.Dataset, *, workdir: str, num_seeds: int, epochs: int,
        batch_size: int, learning_rate: float, label_noise: float = 0.0,
        bar: tqdm | None = None) -> list:
    """Trains `specs` x `num_seeds`, writes the table (md, JSON) and figures; returns the rows.

    Files under `workdir` (suffix '_noise<percent>' with label noise): table.md, table.json,
    reliability_<loss>.png per loss and risk_coverage.png.
    """
    start = time.time()
    os.makedirs(workdir, exist_ok=True)
    if bar is None:
        bar = tqdm(total=epochs, disable=True)
    out = train_all(ds, num_seeds, epochs, batch_size, learning_rate, bar, specs)
    rows = [summarize(spec, jax.tree.map(lambda a, i=i: a[i], out))
            for i, spec in enumerate(specs)]
    suffix = f"_noise{round(100 * label_noise)}" if label_noise > 0 else ""
    title = (f"digits (sklearn, {len(ds.train_labels)} train / {len(ds.test_labels)} test), "
             f"label noise {label_noise:g}, SmallCNN, {epochs} epochs, "
             f"{num_seeds} seeds, mean ± std")
    table = markdown_table(rows, title)
    print(table)
    with open(os.path.join(workdir, f"table{suffix}.md"), "w") as f:
        f.write(table)
    for row in rows:
        report.plot_reliability(row["reliability"], os.path.join(
            workdir, f"reliability_{file_stem(row['loss'])}{suffix}.png"),
            f"{row['loss']} ({num_seeds} seeds pooled)", ece=row["pooled_ece"])
    plot_risk_coverage(rows, os.path.join(workdir, f"risk_coverage{suffix}.png"),
                       f"risk-coverage, test split, {num_seeds} seeds pooled")
    json_rows = [{k: v for k, v in r.items() if k != "risk_coverage"} for r in rows]
    report.write_json(os.path.join(workdir, f"table{suffix}.json"),
                      {"title": title, "label_noise": label_noise, "epochs": epochs,
                       "num_seeds": num_seeds, "columns": list(COLUMNS),
                       "wall_time_s": time.time() - start, "rows": json_rows})
    return rows


def main(argv):
    del argv
    if not 0.0 <= F.label_noise < 1.0:
        raise app.UsageError(f"--label_noise must be in [0, 1), got {F.label_noise}.")
    if F.num_seeds < 1 or F.epochs < 1 or F.batch_size < 1:
        raise app.UsageError("--num_seeds, --epochs and --batch_size must be >= 1.")
    try:
        specs = loss_specs(F.losses)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    start = time.time()
    ds = data.load_digits()
    if F.label_noise > 0:
        ds = ds._replace(train_labels=data.symmetric_label_noise(
            ds.train_labels, F.label_noise, ds.num_classes))
    desc = f"{len(specs)} losses x {F.num_seeds} seeds"
    with tqdm(total=F.epochs, unit="epoch", desc=desc, dynamic_ncols=True) as bar:
        run(specs, ds, workdir=F.workdir, num_seeds=F.num_seeds, epochs=F.epochs,
            batch_size=F.batch_size, learning_rate=F.learning_rate, label_noise=F.label_noise,
            bar=bar)
    print(f"wrote table.md/.json, reliability and risk-coverage PNGs under {F.workdir} "
          f"in {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
