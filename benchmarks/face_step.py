r"""Face-recognition train step: ArcFace against ArcFace + GSC, IR-ResNet-50 at CASIA's scale.

The train step of the shared loop (`experiments.common.loop`) as `experiments.face` runs it with
`experiments/face/configs/arcface.py` (IR-ResNet-50 at 112x112, a cosine classifier over 10,572
identities as in CASIA-WebFace, split over the devices when there are several, ArcFace s 64
m 0.5, SGD momentum 0.9 with weight decay 5e-4), on a synthetic uint8 batch, timed round-robin
(`benchmarks._timing.interleaved_medians`) for ``arcface`` and ``arcface_gsc`` (gamma 0.01,
top_c 3, a Table 5 setting). The ratio is GSC's overhead in a whole step, and the step time
gives the expected wall time of one Table 5 run (32K steps at batch 512) on the machine.

On a CPU these are sanity figures (use a small ``--batch``); on a GPU or TPU host run it with the
real batch size (``--batch 512 --bf16``).

    python -m benchmarks.face_step [--batch 8] [--repeats 3] [--bf16]
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import _timing
from benchmarks import _train_steps
from experiments.face import models

CONFIG = "experiments/face/configs/arcface.py"
TABLE5_STEPS, TABLE5_BATCH = 32_000, 512
DEFAULTS = {
    "model": "iresnet50",
    "width": 64,
    "depths": (),
    "image_size": 112,
    "batch": 8,
    "identities": 10_572,
    "repeats": 3,
    "gamma": 0.01,
    "top_c": 3,
    "bf16": False,
}


def config_of(plan: dict, gamma: float):
    """The arcface_casia config of `plan` with GSC strength `gamma` (0: ArcFace alone)."""
    return _train_steps.load_config(
        _train_steps.repo_path(CONFIG),
        {
            "model.name": plan["model"],
            "model.width": plan["width"],
            "model.depths": tuple(plan["depths"]),
            "data.image_size": plan["image_size"],
            "batch_size": plan["batch"],
            "bf16": plan["bf16"],
            "loss.gsc.gamma": gamma,
            "loss.gsc.top_c": plan["top_c"],
            "run.progress": False,
        },
    )


def run(plan: dict) -> list[dict]:
    """Times the arcface and arcface_gsc steps of `plan` (keys of DEFAULTS); one record."""
    plan = {**DEFAULTS, **plan}
    size = plan["image_size"]
    source = _train_steps.SyntheticSource(plan["identities"], (size, size, 3))
    runs = {
        "arcface": _train_steps.make_run(config_of(plan, 0.0), source),
        "arcface_gsc": _train_steps.make_run(config_of(plan, plan["gamma"]), source),
    }
    mesh = runs["arcface"].mesh
    head_sharded = runs["arcface"].task.class_sharding(runs["arcface"].config, mesh) is not None
    batch = source.batch(plan["batch"], mesh)
    timings, machine, _ = _train_steps.time_losses(runs, batch, repeats=plan["repeats"])
    images_per_s = timings["arcface"]["images_per_s"]
    return [
        {
            "model": f"{plan['model']} width {plan['width']}"
            + (f" depths {tuple(plan['depths'])}" if plan["depths"] else "")
            + f", {plan['identities']} identities, {'bf16' if plan['bf16'] else 'f32'}, "
            f"head sharded: {head_sharded}",
            "input": [plan["batch"], size, size, 3],
            "plan": plan,
            "machine": machine,
            "timings": timings,
            "ratio_arcface_gsc_to_arcface": (
                timings["arcface_gsc"]["median_s"] / timings["arcface"]["median_s"]
            ),
            "table5_run_hours_at_this_rate": TABLE5_STEPS * TABLE5_BATCH / images_per_s / 3600,
        }
    ]


def markdown(records: list[dict]) -> str:
    """One row per (record, loss): median step ms, images/s, the ratio, a Table 5 run's hours."""
    lines = [
        "| model | batch | loss | median step ms | images/s | compile + first step s | "
        "step / ArcFace | Table 5 run at this rate, h |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        base = rec["timings"]["arcface"]["median_s"]
        for name in ("arcface", "arcface_gsc"):
            t = rec["timings"][name]
            hours = f"{rec['table5_run_hours_at_this_rate']:.3g}" if name == "arcface" else ""
            lines.append(
                f"| {rec['model']}, {rec['input'][1]}px | {rec['input'][0]} | "
                f"{t['label']} | {t['median_s'] * 1e3:.1f} | {t['images_per_s']:.2f} | "
                f"{t['compile_s']:.1f} | {t['median_s'] / base:.3f} | {hours} |"
            )
    return "\n".join(lines)


def _depths(text: str) -> tuple:
    return tuple(int(n) for n in text.split(",")) if text else ()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULTS["model"], choices=models.MODELS)
    parser.add_argument(
        "--width",
        type=int,
        default=DEFAULTS["width"],
        help="backbone width (64: the real IR-ResNet)",
    )
    parser.add_argument(
        "--depths",
        type=_depths,
        default=(),
        help="blocks per stage overriding the model's, e.g. 1,1,1,1",
    )
    parser.add_argument("--image_size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="global batch")
    parser.add_argument("--identities", type=int, default=DEFAULTS["identities"])
    parser.add_argument(
        "--repeats", type=int, default=DEFAULTS["repeats"], help="timed samples per loss"
    )
    parser.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    parser.add_argument("--top_c", type=int, default=DEFAULTS["top_c"])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/face_step.json")
    args = parser.parse_args(argv)
    plan = {k: v for k, v in vars(args).items() if k != "out"}
    try:
        records = run(plan)
    except ValueError as error:  # a bad setting, named by the config's validation
        parser.error(str(error))
    print(markdown(records))
    rec = records[0]
    print(
        f"arcface_gsc / arcface step-time ratio: {rec['ratio_arcface_gsc_to_arcface']:.3f}; "
        f"one Table 5 run ({TABLE5_STEPS} steps x {TABLE5_BATCH}) at this rate: "
        f"{rec['table5_run_hours_at_this_rate']:.3g} h"
    )
    _timing.write_json(
        args.out,
        {
            "benchmark": "face_step",
            "measure": "one jitted train step of the shared loop (arcface_casia recipe), median "
            "seconds; images/s",
            **rec,
            "args": vars(args),
        },
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
