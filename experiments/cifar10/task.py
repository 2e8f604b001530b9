"""The CIFAR-10 task: an in-memory image dataset, AlexNet or ConvMixer (GSC paper Table 1-2).

Data: an image folder DIR/{train,test}/<class>/<image> (`config.data.data_dir`, decoded once and
cached), an arrays file (`config.data.npz`) or TFDS `cifar10` (downloaded once). Training images
get the 4-px zero-pad random crop + horizontal flip of Lee et al. (2015) on the device
(`config.data.augment`); subsets and symmetric label noise as in `memory.prepare`.
"""

from experiments.cifar10 import models
from experiments.common import augment
from experiments.common import config as cfg
from experiments.common import console
from experiments.common.data import memory

# AlexNet without BN at its recipe's lr 0.01 stays near chance for its first few thousand steps
# (measured on the CIFAR-10 JPEG copy, 4,096 training images, 4 epochs of 32 steps: 10.0 % test
# top-1 at lr 0.01, 23.8 % at lr 0.05; experiments/README.md).
SHORT_ALEXNET_STEPS = 2000


def validate(config) -> None:
    cfg.check(
        config, "model.name", cfg.one_of(*models.MODELS), f"one of {', '.join(models.MODELS)}"
    )
    memory.check_subset_fields(config)
    examples = config.data.num_train_examples or 50_000
    steps = config.epochs * (examples // config.batch_size)
    if (
        config.model.name == "alexnet"
        and steps < SHORT_ALEXNET_STEPS
        and config.optimizer.learning_rate <= 0.01
    ):
        console.say(
            f"note: a run of about {steps} steps is too short for AlexNet at lr "
            f"{config.optimizer.learning_rate:g} (the recipe's, for 64,000 steps): it "
            "stays near chance. For a shortened pipeline check pass "
            "--config.optimizer.learning_rate=0.05."
        )


def load(config) -> memory.Dataset:
    """The whole dataset of `config.data` (before subsets and noise)."""
    data = config.data
    if data.npz:
        return memory.load_npz(data.npz)
    if data.data_dir:
        return memory.load_image_folder(data.data_dir, write_cache=_is_process_zero())
    memory.check_tfds_available(data.tfds_name, data.tfds_data_dir or None)
    return memory.load_tfds(data.tfds_name, data.tfds_data_dir or None)


def _is_process_zero() -> bool:
    import jax  # pylint: disable=import-outside-toplevel

    return jax.process_index() == 0


def make_source(config) -> memory.ArraySource:
    dataset, info = memory.prepare(load(config), config.data)
    return memory.ArraySource(
        dataset, augment=augment.random_crop_flip if config.data.augment else None, info=info
    )


def make_model(config, num_classes: int, mesh):
    del mesh
    fields = {k: v for k, v in config.model.items() if k != "name"}
    return models.create_model(config.model.name, num_classes, config.bf16, **fields)
