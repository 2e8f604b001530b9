"""The FER2013 task: the three usages in memory, TenCrop training and evaluation, the VGG of
Khairuddin & Chen (2021) (GSC paper Table 6).

Data: the Kaggle `fer2013.csv` (`config.data.csv`) or an image folder DIR/{train,val,test}/
<emotion>/<image> (`config.data.data_dir`; train = Training, val = PublicTest, test =
PrivateTest). `config.data.val_usage` says which test usage validates (default PrivateTest, as in
usef-kh/fer); the other one is the test split. Training views: geometry, TenCrop and random
erasing on the device (`augment.train_views`, every crop a sample, or one of the ten with
`config.data.train_crops=1`); evaluation: the ten crops' logits averaged (the multiview
evaluator over `augment.eval_views`).
"""

import functools

import jax.numpy as jnp

from experiments.common import config as cfg
from experiments.common.data import memory
from experiments.fer2013 import augment
from experiments.fer2013 import data
from experiments.fer2013 import models

MIN_CROP = 16  # four 2x2 max-pools


def validate(config) -> None:
    d = config.data
    cfg.check(
        config,
        "data.val_usage",
        cfg.one_of(*data.VAL_USAGES),
        f"one of {', '.join(data.VAL_USAGES)} (the other one is the test split)",
    )
    cfg.check(
        config,
        "data.train_crops",
        cfg.one_of(1, augment.NUM_TEN_CROPS),
        f"1 or {augment.NUM_TEN_CROPS} (TenCrop)",
    )
    cfg.check(
        config,
        "data.crop",
        lambda c: isinstance(c, int) and c >= MIN_CROP,
        f"an integer >= {MIN_CROP} (the VGG pools four times)",
    )
    for path in ("model.width", "model.hidden"):
        cfg.check(config, path, cfg.positive_int, "a positive integer")
    cfg.check(config, "model.dropout", lambda p: 0 <= p < 1, "in [0, 1)")
    memory.check_subset_fields(config)
    if bool(d.data_dir) + bool(d.csv) + bool(d.npz) != 1:
        raise ValueError(
            "set exactly one of config.data.data_dir (image folder DIR/{train,val,"
            "test}/<emotion>/*), config.data.csv (the Kaggle fer2013.csv) and "
            "config.data.npz."
        )


def load(config) -> memory.Dataset:
    """The train / validation / test arrays of `config.data` (before subsets and noise)."""
    d = config.data
    if d.npz:
        return memory.load_npz(d.npz)
    splits = data.load(d.data_dir or None, d.csv or None)
    fer = data.make_dataset(splits, d.val_usage)
    return memory.Dataset(
        fer.train_images,
        fer.train_labels,
        fer.test_images,
        fer.test_labels,
        fer.class_names,
        splits.source,
        fer.val_images,
        fer.val_labels,
    )


def make_source(config) -> memory.ArraySource:
    dataset, info = memory.prepare(load(config), config.data)
    side = dataset.train_images.shape[1]
    if config.data.crop > side:
        raise ValueError(f"config.data.crop {config.data.crop} exceeds the {side}x{side} faces.")
    return memory.ArraySource(
        dataset,
        info=info,
        train_views=functools.partial(
            augment.train_views, crop=config.data.crop, num_crops=config.data.train_crops
        ),
        eval_views=functools.partial(augment.eval_views, crop=config.data.crop),
    )


def make_model(config, num_classes: int, mesh):
    del mesh
    m = config.model
    return models.VGG(
        num_classes=num_classes,
        width=m.width,
        hidden=m.hidden,
        dropout=m.dropout,
        dtype=jnp.bfloat16 if config.bf16 else jnp.float32,
    )


def info(config) -> dict:
    """The usages and every departure from the recipe (`configs/vgg.py`)."""
    from experiments.fer2013.configs import vgg  # pylint: disable=import-outside-toplevel

    return {
        "val_usage": config.data.val_usage,
        "test_usage": data.check_val_usage(config.data.val_usage),
        "departures": vgg.departures(config),
    }
