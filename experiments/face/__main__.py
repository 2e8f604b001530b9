"""Face recognition with ArcFace / CosFace (+ GSC): `python -m experiments.face --workdir W ...`.

Examples:
  python -m experiments.face --workdir runs/arc --data_dir casia/ --val_dir casia_bins/
  python -m experiments.face --workdir runs/arc_gsc --data_dir casia/ --val_dir casia_bins/ \
      --margin arcface --gsc_gamma 0.01 --gsc_top_c 3 --bf16
  python -m experiments.face --workdir runs/t5 --data_dir casia/ --val_dir casia_bins/ --table 5
  python -m experiments.face --workdir runs/tiny --data_dir faces/ --val_sets lfw/ \
      --model iresnet18 --width 16 --depths 1,1,1,1 --image_size 32 --epochs 2 --batch_size 64
Running the same command again resumes from the latest checkpoint; SIGTERM/Ctrl-C saves and exits.
"""

import dataclasses
import pickle
import sys

from absl import app, flags

from experiments.common import checkpoint, loop, losses, parallel
from experiments.common import flags as common_flags
from experiments.face import data, models, tables, train

F = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots).",
                    required=True)
flags.DEFINE_string("data_dir", None, "Identity folder of aligned faces: DIR/<identity>/*.jpg.")
flags.DEFINE_string("model", "iresnet50", " | ".join(models.MODELS) + ".")
flags.DEFINE_list("depths", [], "Blocks per stage, overriding --model's (e.g. 1,1,1,1).")
flags.DEFINE_integer("width", 64, "Backbone width (64; smaller for CPU runs).")
flags.DEFINE_integer("embedding_size", 512, "Embedding dimension D.")
flags.DEFINE_float("dropout", 0.0, "Dropout before the embedding layer.")
flags.DEFINE_enum("margin", "arcface", ["arcface", "cosface"], "Margin of the cosine logits.")
flags.DEFINE_float("margin_scale", 64.0, "Scale s of the cosine logits.")
flags.DEFINE_float("margin_m", None, "Margin m (default: 0.5 arcface, 0.4 cosface).")
common_flags.define_loss_flags(num_classes_help="the number of identities")
flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's 34, about 32K steps).")
flags.DEFINE_integer("batch_size", None, "Global batch (default: 512).")
flags.DEFINE_float("learning_rate", None, "Base lr (default: 0.1).")
flags.DEFINE_integer("eval_batch_size", 256, "Global batch of the evaluations.")
flags.DEFINE_integer("image_size", 112, "Model input size (a multiple of 16).")
flags.DEFINE_integer("holdout_every", 50, "Hold out every N-th image of an identity for the "
                     "identification metrics.")
flags.DEFINE_list("val_sets", [], "Verification sets: .bin files or folders with pairs.txt.")
flags.DEFINE_string("val_dir", None, "Folder searched for lfw.bin, calfw.bin, cfp_ff.bin, "
                    "cplfw.bin, cfp_fp.bin and agedb_30.bin.")
flags.DEFINE_integer("num_folds", 10, "Folds of the verification protocol.")
flags.DEFINE_integer("seed", 0, "Seed of init, shuffling and augmentation.")
flags.DEFINE_bool("bf16", False, "bfloat16 compute (float32 parameters, loss and metrics).")
flags.DEFINE_bool("shard_head", None, "Split the classifier over the devices (default: when "
                  "there is more than one).")
flags.DEFINE_integer("workers", 0, "Parallel decode calls per host (0: tf.data autotune).")
flags.DEFINE_integer("table", 0, "5: the paper's Table 5 rows.")
flags.DEFINE_list("rows", [], "With --table 5: run only these row ids (the others read "
                  "'not run').")
common_flags.define_run_flags()


def _config() -> train.RunConfig:
    loss = common_flags.loss_spec_from_flags(F)
    margin_m = F.margin_m if F.margin_m is not None else losses.MARGIN_DEFAULTS[F.margin][1]
    loss = dataclasses.replace(loss, margin=F.margin, margin_scale=F.margin_scale,
                               margin_m=margin_m)
    try:
        depths = tuple(int(d) for d in F.depths) or None
    except ValueError:
        raise ValueError(f"--depths must be integers, got {','.join(F.depths)}.") from None
    return train.RunConfig(
        data_dir=F.data_dir, model=F.model, loss=loss, epochs=F.epochs, batch_size=F.batch_size,
        learning_rate=F.learning_rate, eval_batch_size=F.eval_batch_size,
        image_size=F.image_size, seed=F.seed, bf16=F.bf16, width=F.width, depths=depths,
        embedding_size=F.embedding_size, dropout=F.dropout, holdout_every=F.holdout_every,
        val_sets=tuple(F.val_sets), val_dir=F.val_dir, num_folds=F.num_folds,
        shard_head=F.shard_head, workers=F.workers, stop_after_steps=F.stop_after_steps)


def main(argv):
    del argv
    common_flags.quiet_logging_unless_asked(F)
    try:
        config = _config()
        tables.check_rows(F.table, F.rows)
        train.validate(config)
        parallel.maybe_initialize_distributed(F.multihost)
        source = data.identity_source(F.data_dir, holdout_every=F.holdout_every)
        train.validate(config, source.num_classes)
        found = data.find_verification_sets(config.val_sets, config.val_dir)
        if not found and not F.table:
            print("note: no verification set given (--val_sets / --val_dir): only the held-out "
                  "identification metrics will be reported.")
        sets = [data.load_verification_set(n, p, config.image_size) for n, p in found.items()]
    except (ValueError, pickle.UnpicklingError) as e:  # MissingDataError; bad pair files
        sys.exit(f"error: {e}")
    try:
        if F.table:
            print(tables.run_table(config, F.workdir, source, sets, F.rows))
            return
        result = train.run(config, F.workdir, source, sets)
    except checkpoint.ConfigMismatchError as e:
        sys.exit(f"error: {e}")
    if result.interrupted_by:
        sys.exit(128 + result.interrupted_by)
    if result.status == loop.DIVERGED:
        sys.exit(f"error: {result.message}")
    keys = ["status", "test_accuracy", "test_ece"] + [
        f"{s.name}_accuracy" for s in sets]
    print({k: result.summary.get(k) for k in keys})


if __name__ == "__main__":
    app.run(main)
