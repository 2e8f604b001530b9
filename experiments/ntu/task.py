"""The NTU RGB+D task: clips of a prepared store (`data`, `prepare`), ResNet3D-18/34 of Hara et
al. (2018) (`models`), clip- and video-level evaluation (GSC paper Table 7).

Data: `config.data.store` (a folder written by `python -m experiments.ntu.prepare`) under
`config.data.protocol` (xsub | xview, or NTU-120's xsub120 | xset). Training clips of
`clip_frames` frames with a random `crop` crop and flip; evaluation: `eval_clips` x `eval_crops`
views of every test video, logits averaged by the multiview evaluator.
"""

from experiments.common import config as cfg
from experiments.ntu import data
from experiments.ntu import models
from experiments.ntu import names


def validate(config) -> None:
    d, m = config.data, config.model
    cfg.check(
        config,
        "data.protocol",
        cfg.one_of(*names.PROTOCOLS),
        f"one of {', '.join(names.PROTOCOLS)}",
    )
    for path in ("data.short_side", "data.clip_frames", "data.crop", "data.eval_clips"):
        cfg.check(config, path, cfg.positive_int, "a positive integer")
    cfg.check(config, "data.eval_crops", cfg.one_of(1, 3), "1 (centre) or 3 (along the long side)")
    cfg.check(
        config,
        "data.workers",
        cfg.non_negative_int,
        "an integer >= 0 (0 or 1: no threads)",
    )
    if d.crop > d.short_side:
        raise ValueError(
            f"config.data.crop {d.crop} exceeds config.data.short_side "
            f"{d.short_side} (the store's shorter side)."
        )
    cfg.check(
        config, "model.name", cfg.one_of(*models.MODELS), f"one of {', '.join(models.MODELS)}"
    )
    cfg.check(config, "model.shortcut", cfg.one_of(*models.SHORTCUTS), "'A' or 'B'")
    cfg.check(config, "model.width", lambda w: isinstance(w, int) and w > 0, "a positive integer")
    if not d.store:
        raise ValueError(
            "config.data.store must name a prepared store: python -m "
            "experiments.ntu.prepare --videos DIR --store STORE, then "
            "--config.data.store STORE."
        )
    del m


def make_source(config) -> data.VideoSource:
    d = config.data
    catalogue = data.catalogue(d.store, d.protocol, d.short_side, d.clip_frames)
    return data.VideoSource(catalogue, d.clip_frames, d.crop, d.eval_clips, d.eval_crops, d.workers)


def make_model(config, num_classes: int, mesh):
    del mesh
    m = config.model
    return models.create_model(
        m.name, num_classes, width=m.width, shortcut=m.shortcut, bf16=config.bf16
    )


def info(config) -> dict:
    from experiments.ntu.configs import resnet3d  # pylint: disable=import-outside-toplevel

    return {"protocol": config.data.protocol, "departures": resnet3d.departures(config)}
