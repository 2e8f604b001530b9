"""FER2013 experiments of the GSC paper (Table 6): `python -m experiments.fer2013 --workdir runs/x`.

Examples:
  python -m experiments.fer2013 --workdir runs/ce --data_dir DIR
  python -m experiments.fer2013 --workdir runs/gsc --csv fer2013.csv --gsc_gamma 0.01 --gsc_top_c 2
  python -m experiments.fer2013 --workdir runs/t6 --data_dir DIR --table 6 --seeds 0,1
  python -m experiments.fer2013 --workdir runs/t6s --data_dir DIR --table 6 --table_rows \
      ce,gsc_0.01_2 --seeds 0,1 --epochs 8 --train_crops 1 --width 8 --hidden 512
DIR is an image folder DIR/{train,val,test}/<emotion>/<image> (train = Training, val = PublicTest,
test = PrivateTest); --csv reads the Kaggle fer2013.csv instead. --val_usage says which test usage
validates (default PrivateTest, as in usef-kh/fer); the other one is the test set.
Running the same command again resumes from the latest checkpoint; SIGTERM/Ctrl-C saves and exits.
"""

import sys

from absl import app, flags

from experiments.common import checkpoint, parallel
from experiments.common import flags as common_flags
from experiments.common.data import DataError
from experiments.fer2013 import data, tables, train

F = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots).",
                    required=True)
flags.DEFINE_string("data_dir", None, "Image folder DIR/{train,val,test}/<emotion>/<image>.")
flags.DEFINE_string("csv", None, "The Kaggle fer2013.csv (emotion, pixels, Usage).")
flags.DEFINE_enum("val_usage", data.DEFAULT_VAL_USAGE, data.VAL_USAGES,
                  "The usage that validates; the other test usage is the test set.")
common_flags.define_loss_flags(num_classes_help="7")
flags.DEFINE_float("label_noise", 0.0, "Symmetric label-noise rate in [0, 1) (training labels).")
flags.DEFINE_integer("epochs", None, "Epochs (default: recipe, 300).")
flags.DEFINE_integer("batch_size", None, "Faces per step (default: recipe, 64).")
flags.DEFINE_float("learning_rate", None, "Base lr (default: recipe, 0.01).")
flags.DEFINE_integer("train_crops", train.RECIPE["train_crops"],
                     "10: TenCrop, every crop a sample (recipe); 1: one of the ten per face.")
flags.DEFINE_integer("crop", train.RECIPE["crop"], "Crop side (recipe 40).")
flags.DEFINE_integer("width", train.RECIPE["width"], "VGG first-stage channels (recipe 64).")
flags.DEFINE_integer("hidden", train.RECIPE["hidden"], "VGG hidden linear width (recipe 4096).")
flags.DEFINE_integer("eval_batch_size", 64, "Faces per evaluation batch (ten crops each).")
flags.DEFINE_integer("seed", 0, "Seed of init, shuffling, augmentation and dropout.")
flags.DEFINE_list("seeds", ["0"], "Seeds of every --table row.")
flags.DEFINE_integer("num_train_examples", 0, "Use the first N training faces (0 = all).")
flags.DEFINE_integer("num_eval_examples", 0, "Use the first N validation / test faces (0 = all).")
flags.DEFINE_bool("bf16", False, "bfloat16 compute.")
flags.DEFINE_integer("table", 0, "6: the rows of the paper's Table 6 (see --table_rows).")
flags.DEFINE_list("table_rows", [], f"Table 6 rows to run (default all): {tables.ROW_IDS}.")
common_flags.define_run_flags()


def main(argv):
    del argv
    common_flags.quiet_logging_unless_asked(F)
    try:
        loss = common_flags.loss_spec_from_flags(F)
        config = train.RunConfig(
            loss, F.label_noise, epochs=F.epochs, batch_size=F.batch_size,
            learning_rate=F.learning_rate, train_crops=F.train_crops, crop=F.crop,
            width=F.width, hidden=F.hidden, val_usage=F.val_usage,
            eval_batch_size=F.eval_batch_size, seed=F.seed,
            num_train_examples=F.num_train_examples, num_eval_examples=F.num_eval_examples,
            bf16=F.bf16, stop_after_steps=F.stop_after_steps, progress=True)
        if F.table not in (0, 6):
            raise ValueError(f"--table must be 6 (the paper's FER2013 table), got {F.table}.")
        rows = tables.check_rows(F.table_rows)
        if not F.seeds or not all(s.strip().isdigit() for s in F.seeds):
            raise ValueError(f"--seeds must be non-negative integers, e.g. 0,1; got {F.seeds}.")
        seeds = tuple(int(s) for s in F.seeds)
        train.validate(config)
        splits = data.load(F.data_dir, F.csv)
        train.validate(config, splits.training[0].shape[1])
    except ValueError as e:  # DataError is a ValueError
        sys.exit(f"error: {e}")
    parallel.maybe_initialize_distributed(F.multihost)
    try:
        if F.table == 6:
            print(tables.run_table6(config, splits, F.workdir, seeds, rows))
            return
        result = train.run(config, splits, F.workdir)
    except (DataError, checkpoint.ConfigMismatchError) as e:
        sys.exit(f"error: {e}")
    if result.status == "diverged":
        sys.exit(f"error: {result.message}")
    if result.interrupted_by:
        sys.exit(128 + result.interrupted_by)
    if result.status == "completed":
        print({k: result.summary[k] for k in ("test_accuracy", "test_accuracy_at_best_val",
                                              "val_accuracy", "best_val_accuracy", "test_ece")})


if __name__ == "__main__":
    app.run(main)
