"""The face-recognition task: ArcFace / CosFace (+ GSC) on an identity folder, IR-ResNet with a
class-sharded cosine classifier (GSC paper Table 5).

Data: an identity folder DIR/<identity>/*.jpg (`data.identity_catalogue`), streamed through
tf.data with the flip-only augmentation of aligned faces (`stream.resize_decoders`); every
`config.data.holdout_every`-th image of an identity is held out for closed-set identification
(the 'test' split). The cosine classifier's weights are split over the devices along the
identities when there is more than one (`models.CosineHead`, model parallel as partial FC;
`config.model.shard_head`): `state_sharding` places the classifier and its optimiser statistics.
"""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common import config as cfg
from experiments.common import parallel
from experiments.common.data import stream
from experiments.face import data
from experiments.face import models

SHARD_HEAD = ("auto", "yes", "no")


def validate(config) -> None:
    if not config.data.data_dir:
        raise ValueError(
            "config.data.data_dir is required: an identity folder DIR/<identity>/*.jpg."
        )
    cfg.check(
        config, "model.name", cfg.one_of(*models.MODELS), f"one of {', '.join(models.MODELS)}"
    )
    if config.loss.margin.name not in ("arcface", "cosface"):
        raise ValueError(
            f"config.loss.margin.name must be arcface or cosface, got {config.loss.margin.name!r}."
        )
    for path in ("model.width", "model.embedding_size"):
        cfg.check(config, path, cfg.positive_int, "a positive integer")
    cfg.check(
        config,
        "data.workers",
        cfg.non_negative_int,
        "an integer >= 0 (0 = tf.data autotune)",
    )
    cfg.check(
        config,
        "data.image_size",
        lambda s: isinstance(s, int) and s >= 16 and s % 16 == 0,
        "a positive multiple of 16 (four stride-2 stages)",
    )
    cfg.check(
        config,
        "model.depths",
        lambda d: d == () or (len(d) == 4 and min(d) >= 1),
        "() (the model's) or four positive block counts",
    )
    cfg.check(config, "model.dropout", lambda p: 0 <= p < 1, "in [0, 1)")
    cfg.check(config, "model.shard_head", cfg.one_of(*SHARD_HEAD), " or ".join(SHARD_HEAD))


def make_source(config) -> stream.StreamSource:
    d = config.data
    train, evaluate = stream.resize_decoders(d.image_size)
    return stream.StreamSource(
        data.identity_catalogue(d.data_dir, holdout_every=d.holdout_every),
        train,
        evaluate,
        d.image_size,
        d.workers,
    )


def class_sharding(config, mesh) -> NamedSharding | None:
    """The classifier's sharding along the identities, or None for a replicated classifier."""
    shard = {"auto": mesh.devices.size > 1, "yes": True, "no": False}[config.model.shard_head]
    return NamedSharding(mesh, P(None, "data")) if shard else None


def make_model(config, num_classes: int, mesh):
    m = config.model
    return models.create_model(
        m.name,
        num_classes,
        width=m.width,
        embedding_size=m.embedding_size,
        dropout=m.dropout,
        scale=config.loss.margin.scale,
        bf16=config.bf16,
        class_sharding=class_sharding(config, mesh),
        depths=tuple(m.depths) or None,
    )


def state_sharding(config, mesh, abstract_state):
    """Leaves under a 'head' / 'kernel' path of shape [D, K'] (the classifier and its optimiser
    statistics) split along the classes, everything else replicated."""
    head = class_sharding(config, mesh)
    replicated = parallel.replicated(mesh)
    if head is None:
        return replicated
    params = abstract_state.params
    num_padded = params["head"]["kernel"].shape[-1]

    def place(path, leaf):
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        is_head = (
            "head" in keys
            and keys[-1] == "kernel"
            and leaf.ndim == 2
            and leaf.shape[-1] == num_padded
        )
        return head if is_head else replicated

    return jax.tree_util.tree_map_with_path(place, abstract_state)


def identity(config, source, mesh) -> dict:
    """The classifier's column count (padded to the devices): a resume must have the same."""
    return {
        "classifier_columns": models.padded_num_classes(
            source.num_classes, class_sharding(config, mesh)
        )
    }


def info(config) -> dict:
    return {"head_sharded": class_sharding(config, parallel.make_mesh()) is not None}
