"""The ImageNet-scale task: streamed images (an image folder or TFDS), ResNet-18/50/101 v1.5
(GSC paper Tables 3 and 4).

Data (`config.data.dataset`): 'folder' (DIR/train/<class>/*, DIR/val/<class>/*, how many users
keep ImageNet; Imagenette in its own layout), 'imagenet2012' (TFDS, manual download) or
'oxford_flowers102' (TFDS). The stream reads every host's share with tf.data
(`stream.StreamSource`, ImageNet's `decoders`). `config.model.init_from` starts a fresh run from
the weights (all but the classifier) of a finished run of the same model: the Table 4
fine-tuning from an ImageNet-trained ResNet-50.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import checkpoint
from experiments.common import config as cfg
from experiments.common.data import stream
from experiments.imagenet import decoders
from experiments.imagenet import models

DATASETS = ("folder", "imagenet2012", "oxford_flowers102")


def validate(config) -> None:
    cfg.check(config, "data.dataset", cfg.one_of(*DATASETS), f"one of {', '.join(DATASETS)}")
    if config.data.dataset == "folder" and not config.data.data_dir:
        raise ValueError(
            "config.data.dataset 'folder' needs config.data.data_dir DIR "
            "(DIR/train/<class>/*, DIR/val/<class>/*)."
        )
    cfg.check(
        config,
        "data.train_crop",
        cfg.one_of(*decoders.TRAIN_CROPS),
        f"one of {', '.join(decoders.TRAIN_CROPS)}",
    )
    cfg.check(
        config,
        "data.eval_crop",
        cfg.one_of(*decoders.EVAL_CROPS),
        f"one of {', '.join(decoders.EVAL_CROPS)}",
    )
    cfg.check(config, "data.image_size", lambda s: isinstance(s, int) and s >= 8, "an integer >= 8")
    cfg.check(config, "data.lighting_std", cfg.non_negative, "a number >= 0")
    cfg.check(
        config,
        "data.workers",
        cfg.non_negative_int,
        "an integer >= 0 (0 = tf.data autotune)",
    )
    cfg.check(
        config, "model.name", cfg.one_of(*models.MODELS), f"one of {', '.join(models.MODELS)}"
    )
    cfg.check(config, "model.width", lambda w: isinstance(w, int) and w > 0, "a positive integer")


def catalogue(config) -> stream.Catalogue:
    d = config.data
    if d.dataset == "folder":
        return stream.folder_catalogue(d.data_dir)
    return stream.tfds_catalogue(d.dataset, d.data_dir or None)


def make_source(config) -> stream.StreamSource:
    d = config.data
    train, evaluate = decoders.decoders(d.train_crop, d.eval_crop, d.image_size, d.lighting_std)
    return stream.StreamSource(catalogue(config), train, evaluate, d.image_size, d.workers)


def make_model(config, num_classes: int, mesh):
    del mesh
    return models.create_model(
        config.model.name, num_classes, bf16=config.bf16, width=config.model.width
    )


def prepare_state(config, state):
    """A fresh run's state with `config.model.init_from`'s weights (all but the classifier)."""
    if not config.model.init_from:
        return state
    return load_backbone(state, config.model.init_from)


def load_backbone(state, workdir: str):
    """`state` with params and batch_stats (all but the classifier 'head') from workdir's latest
    checkpoint of the same architecture."""
    manager = checkpoint.make_manager(workdir)
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"config.model.init_from {workdir!r} holds no checkpoint.")
    restored = manager.restore(step, args=checkpoint.ocp.args.StandardRestore())
    flat = flax.traverse_util.flatten_dict
    for field in ("params", "batch_stats"):
        mine, theirs = flat(getattr(state, field)), flat(restored[field])
        for key in mine:
            if key[0] != "head":
                if key not in theirs or np.shape(theirs[key]) != mine[key].shape:
                    raise ValueError(
                        f"config.model.init_from {workdir!r}: {'/'.join(key)} is "
                        "missing or has another shape; use a run of the same "
                        "config.model.name."
                    )
                mine[key] = jax.device_put(
                    jnp.asarray(theirs[key], mine[key].dtype), mine[key].sharding
                )
        state = state.replace(**{field: flax.traverse_util.unflatten_dict(mine)})
    return state
