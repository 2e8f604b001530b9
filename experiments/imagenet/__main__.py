"""ImageNet-scale experiments of the GSC paper: `python -m experiments.imagenet --workdir W ...`.

Examples:
  python -m experiments.imagenet --workdir runs/rn50_ce --dataset imagenet2012 --model resnet50
  python -m experiments.imagenet --workdir runs/rn50_gsc --dataset folder --data_dir DIR \
      --model resnet50 --gsc_gamma 0.02 --gsc_top_c 7 --bf16
  python -m experiments.imagenet --workdir runs/t3 --dataset imagenet2012 --table 3 --bf16
  python -m experiments.imagenet --workdir runs/t4 --dataset oxford_flowers102 --table 4 \
      --init_from runs/t3/table3/rn50_ce
Running the same command again resumes from the latest checkpoint; SIGTERM/Ctrl-C saves and exits.
"""

import sys

from absl import app, flags

from experiments.common import checkpoint, loop, parallel
from experiments.common import flags as common_flags
from experiments.imagenet import pipeline, tables, train

F = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots).",
                    required=True)
flags.DEFINE_enum("dataset", "folder", list(train.DATASETS), "Data source.")
flags.DEFINE_string("data_dir", None, "Image-folder root (DIR/train/<class>/*, DIR/val/<class>/*) "
                    "for --dataset folder; the TFDS data directory otherwise.")
flags.DEFINE_string("model", "resnet50", "resnet18 | resnet50 | resnet101.")
flags.DEFINE_string("recipe", None, "pycls | ols_flowers (default: pycls for ImageNet and "
                    "folders, ols_flowers for oxford_flowers102).")
common_flags.define_loss_flags()
flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's 100).")
flags.DEFINE_integer("batch_size", None, "Global batch (default: recipe, 256 pycls / 64 ols).")
flags.DEFINE_float("learning_rate", None, "Base lr (default: 0.1 * batch / 128 pycls, 0.01 ols).")
flags.DEFINE_integer("eval_batch_size", 250, "Global evaluation batch (padded and masked).")
flags.DEFINE_integer("image_size", 224, "Train crop / evaluation size (smaller for CPU runs).")
flags.DEFINE_integer("seed", 0, "Seed of init, shuffling and augmentation.")
flags.DEFINE_bool("bf16", False, "bfloat16 compute (float32 parameters, loss and metrics).")
flags.DEFINE_string("init_from", None, "Workdir of an ImageNet run of the same model whose "
                    "weights (all but the classifier) initialise this run (Table 4 fine-tuning).")
flags.DEFINE_integer("workers", 0, "Parallel decode calls per host (0: tf.data autotune).")
flags.DEFINE_integer("table", 0, "3: the paper's Table 3 rows; 4: the Table 4 rows.")
flags.DEFINE_list("rows", [], "With --table: run only these row ids (the others read 'not run').")
common_flags.define_run_flags()


def main(argv):
    del argv
    common_flags.quiet_logging_unless_asked(F)
    loss = common_flags.loss_spec_from_flags(F)
    config = train.RunConfig(
        dataset=F.dataset, data_dir=F.data_dir, model=F.model, loss=loss, recipe=F.recipe,
        epochs=F.epochs, batch_size=F.batch_size, learning_rate=F.learning_rate,
        eval_batch_size=F.eval_batch_size, image_size=F.image_size, seed=F.seed, bf16=F.bf16,
        init_from=F.init_from, workers=F.workers, stop_after_steps=F.stop_after_steps)
    try:
        if F.table not in (0, 3, 4):
            raise ValueError(f"--table must be 3 or 4, got {F.table}.")
        tables.check_rows(F.table, F.rows)
        train.validate(config)
        parallel.maybe_initialize_distributed(F.multihost)
        source = pipeline.make_source(F.dataset, F.data_dir)
        if not F.table:
            train.validate(config, source.num_classes)
    except ValueError as e:  # includes pipeline.MissingDataError
        sys.exit(f"error: {e}")
    try:
        if F.table:
            print(tables.run_table(F.table, config, F.workdir, source, F.rows))
            return
        result = train.run(config, F.workdir, source)
    except checkpoint.ConfigMismatchError as e:
        sys.exit(f"error: {e}")
    if result.interrupted_by:
        sys.exit(128 + result.interrupted_by)
    if result.status == loop.DIVERGED:
        sys.exit(f"error: {result.message}")
    print({k: result.summary.get(k) for k in ("status", "test_accuracy", "test_top5", "test_ece",
                                              "test_nll", "images_per_s")})


if __name__ == "__main__":
    app.run(main)
