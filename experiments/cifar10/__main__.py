"""CIFAR-10 experiments of the GSC paper: `python -m experiments.cifar10 --workdir runs/x ...`.

Examples:
  python -m experiments.cifar10 --workdir runs/ce --data_dir DIR --loss ce
  python -m experiments.cifar10 --workdir runs/gsc --data_dir DIR --gsc_gamma 0.05 --gsc_top_c 2
  python -m experiments.cifar10 --workdir runs/t1 --data_dir DIR --table 1
  python -m experiments.cifar10 --workdir runs/t2 --data_dir DIR --table 2
  python -m experiments.cifar10 --workdir runs/f5 --data_dir DIR --sweep
DIR is an image folder DIR/{train,test}/<class>/<image>; without --data_dir, TFDS `cifar10`.
Running the same command again resumes from the latest checkpoint (a different configuration in
the same workdir is refused; more --epochs extend the run); SIGTERM/Ctrl-C saves and exits. A run
whose training loss stops being finite ends with status 1 and summary.json "status": "diverged".
Kept short so that the logic (train.py, tables.py) can be imported and tested.
"""

import os
import sys

from absl import app, flags

from experiments.common import checkpoint, data, parallel
from experiments.common import flags as common_flags
from experiments.cifar10 import tables, train

F = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots).",
                    required=True)
flags.DEFINE_string("data_dir", None, "Image-folder root (DIR/train/<class>/*, "
                    "DIR/test/<class>/*); default: TFDS cifar10.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
flags.DEFINE_string("model", "alexnet", "alexnet | convmixer.")
common_flags.define_loss_flags(num_classes_help="10")
flags.DEFINE_float("label_noise", 0.0, "Symmetric label-noise rate in [0, 1) (training labels).")
flags.DEFINE_integer("epochs", None, "Epochs (default: recipe, 164 alexnet / 25 convmixer).")
flags.DEFINE_integer("batch_size", None, "Global batch (default: recipe, 128 / 512).")
flags.DEFINE_float("learning_rate", None, "Base lr (default: recipe, 0.01 / 0.01).")
flags.DEFINE_integer("eval_batch_size", 1000, "Global test batch (padded and masked).")
flags.DEFINE_integer("seed", 0, "Seed of init, shuffling and augmentation.")
flags.DEFINE_integer("num_train_examples", 0, "Use the first N training images (0 = all).")
flags.DEFINE_integer("num_test_examples", 0, "Evaluate on the first N test images (0 = all).")
flags.DEFINE_bool("bf16", False, "bfloat16 compute.")
flags.DEFINE_integer("table", 0, "1: all Table 1 rows; 2: the noisy-label grid of Table 2.")
flags.DEFINE_bool("sweep", False, "Fig. 5 sweep: gamma x top_c (and entropy lambda).")
flags.DEFINE_list("sweep_gammas", ["0.01", "0.02", "0.05", "0.1", "0.2"], "Sweep strengths.")
flags.DEFINE_list("sweep_top_c", ["2", "3", "4", "5"], "Sweep top_c values.")
common_flags.define_run_flags()


def main(argv):
    del argv
    common_flags.quiet_logging_unless_asked(F)
    loss = common_flags.loss_spec_from_flags(F)
    config = train.RunConfig(F.model, loss, F.label_noise, epochs=F.epochs,
                             batch_size=F.batch_size, learning_rate=F.learning_rate,
                             eval_batch_size=F.eval_batch_size, seed=F.seed,
                             num_train_examples=F.num_train_examples,
                             num_test_examples=F.num_test_examples, bf16=F.bf16,
                             stop_after_steps=F.stop_after_steps)
    try:
        if F.table not in (0, 1, 2):
            raise ValueError(f"--table must be 1 or 2, got {F.table}.")
        class_names = train.check_data_source(F.data_dir, F.tfds_data_dir)
        train.validate(config, len(class_names))
    except ValueError as e:
        sys.exit(f"error: {e}")
    parallel.maybe_initialize_distributed(F.multihost)
    try:
        dataset = train.load_dataset(F.data_dir, F.tfds_data_dir,
                                     os.path.join(F.workdir, "data_cache"))
        if F.table == 1:
            print(tables.run_table1(config, dataset, F.workdir))
        elif F.table == 2:
            print(tables.run_table2(config, dataset, F.workdir))
        elif F.sweep:
            print(tables.run_sweep(config, dataset, F.workdir, tuple(map(float, F.sweep_gammas)),
                                   tuple(map(int, F.sweep_top_c))))
        else:
            result = train.run(config, dataset, F.workdir)
            if result.status == "diverged":
                sys.exit(f"error: {result.message}")
            if result.interrupted_by:
                sys.exit(128 + result.interrupted_by)
            if result.status == "completed":
                print({k: result.summary[k] for k in ("test_accuracy", "test_ece", "test_nll")})
    except (data.DataError, checkpoint.ConfigMismatchError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
