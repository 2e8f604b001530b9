r"""ImageNet ResNet-50 with the pycls recipe (GSC paper Table 3).

    python -m experiments.imagenet --workdir runs/rn50_ce --config.data.dataset=imagenet2012
    python -m experiments.imagenet --workdir runs/rn50_gsc --config.data.data_dir DIR \
        --config.loss.gsc.gamma=0.02 --config.loss.gsc.top_c=7 --config.bf16

Recipe (Radosavovic et al. 2020, facebookresearch/pycls configs/dds_baselines/resnet/
R-50-1x64d_dds_8gpu.yaml): SGD with Nesterov momentum 0.9, lr 0.1 * batch / 128 (0.2 at batch
256), weight decay 5e-5 on every parameter (coupled, as PyTorch's SGD), a cosine schedule set once
per epoch, lr(e) = lr (1 + cos(pi e / E)) / 2, no warm-up, 100 epochs, batch 256, Inception crop +
flip + PCA lighting 0.1, evaluation resize 256 / centre 224. Paper: ResNet-50 top-1 error CE
23.03 %, CE+GSC(0.02, 7) 22.49 %.
"""

from experiments.common import config as base

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config():
    config = base.base_config()
    config.task = "experiments.imagenet.task"
    config.data.dataset = "folder"  # folder | imagenet2012 | oxford_flowers102
    config.data.data_dir = ""  # image folder root, or the TFDS data directory
    config.data.image_size = 224  # train crop / evaluation size (smaller for CPU runs)
    config.data.train_crop = "inception"  # inception | resize_random
    config.data.eval_crop = "short_side"  # short_side | square
    config.data.lighting_std = 0.1  # PCA lighting strength (0 = off)
    config.data.workers = 0  # parallel decode calls per host (0 = tf.data autotune)
    config.data.mean = IMAGENET_MEAN
    config.data.std = IMAGENET_STD
    config.model.name = "resnet50"  # resnet18 | resnet50 | resnet101
    config.model.width = 64  # base width (smaller only for tests)
    config.model.init_from = ""  # workdir of a run of the same model whose backbone starts this
    config.epochs = 100
    config.batch_size = 256
    config.eval_batch_size = 250
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.reference_batch = 128  # lr = 0.1 * batch_size / 128
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-5
    config.schedule.name = "cosine_per_epoch"
    config.evals = base.classification_evals(("test",))
    config.resumable = (*config.resumable, "data.workers")
    return config
