"""FER2013: both data formats, the split flag, the on-device augmentation, TenCrop evaluation, the
VGG, reduce-on-plateau and the best-validation state in the one loop, bad input, Table 6 and a
tiny end-to-end run (generated faces in tmp_path; no real data needed)."""

import csv
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from _experiments_util import REPO
from _experiments_util import load_config
from _experiments_util import run_module

import gsc_jax
from experiments.common import config as cfg
from experiments.common import evaluators
from experiments.common import grid
from experiments.common import loop
from experiments.common import losses
from experiments.common import parallel
from experiments.common import plateau
from experiments.common import steps
from experiments.common.data import DataError
from experiments.common.data import memory
from experiments.common.evaluators import classification
from experiments.fer2013 import augment
from experiments.fer2013 import data
from experiments.fer2013 import models
from experiments.fer2013 import task as fer_task

SIDE = 12  # generated faces are SIDE x SIDE (FER2013's are 48 x 48)
# Per usage, how many faces of each label (every emotion present in every split).
COUNTS = {
    "Training": (3, 1, 2, 3, 2, 2, 3),
    "PublicTest": (1,) * 7,
    "PrivateTest": (2, 1, 1, 1, 1, 1, 1),
}
FOLDER_OF = {usage: split for split, usage in data.FOLDER_USAGE.items()}
# A run small enough to compile and train in seconds on 20x20 faces.
TINY = dict(
    epochs=1, batch_size=8, data__crop=16, model__width=2, model__hidden=8, eval_batch_size=4
)


pytestmark = pytest.mark.usefixtures("fast_compile")


def _faces(seed=0, side=SIDE):
    """{usage: [(uint8 [side, side] face, label), ...]} with every face distinct."""
    rng = np.random.RandomState(seed)
    return {
        usage: [
            (rng.randint(0, 256, (side, side)).astype(np.uint8), label)
            for label, n in enumerate(counts)
            for _ in range(n)
        ]
        for usage, counts in COUNTS.items()
    }


def _write_csv(path, faces, extra_column=True):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"] + (["note"] if extra_column else []))
        rows = [
            (label, " ".join(map(str, face.ravel())), usage)
            for usage, items in faces.items()
            for face, label in items
        ]
        for n in np.random.RandomState(1).permutation(len(rows)):  # usages interleaved
            writer.writerow(list(rows[n]) + (["x"] if extra_column else []))
    return str(path)


def _write_folder(root, faces, name_of=lambda label: data.EMOTIONS[label]):
    """PNG (lossless) faces in root/{train,val,test}/<emotion>/<n>.png."""
    for usage, items in faces.items():
        for label in range(len(data.EMOTIONS)):
            (root / FOLDER_OF[usage] / name_of(label)).mkdir(parents=True)
        for n, (face, label) in enumerate(items):
            Image.fromarray(face).save(root / FOLDER_OF[usage] / name_of(label) / f"{n}.png")
    return str(root)


# ---------------------------------------------------------------------------------------------
# Data: two formats, one result.


def test_csv_and_folder_load_the_same_arrays_and_labels(tmp_path):
    faces = _faces()
    from_csv = data.load_csv(_write_csv(tmp_path / "fer2013.csv", faces))
    # Capitalised folder names (as in some releases) map by name too.
    from_folder = data.load_folder(
        _write_folder(tmp_path / "imgs", faces, lambda k: data.EMOTIONS[k].capitalize())
    )
    for usage in data.USAGES:
        (xc, yc), (xf, yf) = from_csv.usage(usage), from_folder.usage(usage)
        assert xc.shape == (len(faces[usage]), SIDE, SIDE, 1) and xc.dtype == np.uint8
        assert yc.dtype == np.int32
        np.testing.assert_array_equal(xc, xf)
        np.testing.assert_array_equal(yc, yf)
        # Each face keeps its own CSV label (angry 0 ... neutral 6), whatever the folder order.
        truth = {face.tobytes(): label for face, label in faces[usage]}
        assert [truth[x[..., 0].tobytes()] for x in xc] == yc.tolist()
        assert sorted(yc.tolist()) == sorted(label for _, label in faces[usage])


def test_folder_labels_follow_the_csv_order_not_the_alphabet(tmp_path):
    faces = _faces()
    ds = data.load_folder(_write_folder(tmp_path, faces))
    images, labels = ds.training
    # 'neutral' is 6 in the CSV (alphabetically it would be 4), 'sad' 4 (alphabetically 5).
    for face, label in faces["Training"]:
        row = next(n for n, x in enumerate(images) if np.array_equal(x[..., 0], face))
        assert labels[row] == label
    assert data.EMOTIONS.index("neutral") == 6 and data.EMOTIONS.index("sad") == 4


def test_split_order_is_class_mixed_and_independent_of_file_order(tmp_path):
    faces = _faces()
    reversed_faces = {u: items[::-1] for u, items in faces.items()}
    a = data.load_csv(_write_csv(tmp_path / "a.csv", faces))
    b = data.load_csv(_write_csv(tmp_path / "b.csv", reversed_faces, extra_column=False))
    for x, y in zip(a.training, b.training):
        np.testing.assert_array_equal(x, y)
    labels = a.training[1]
    assert labels.tolist() != sorted(labels.tolist())


@pytest.mark.parametrize("val_usage", data.VAL_USAGES)
def test_val_usage_flag_picks_the_validation_and_test_splits(tmp_path, val_usage):
    splits = data.load_csv(_write_csv(tmp_path / "f.csv", _faces()))
    ds = data.make_dataset(splits, val_usage)
    other = "PublicTest" if val_usage == "PrivateTest" else "PrivateTest"
    assert (ds.val_usage, ds.test_usage) == (val_usage, other)
    np.testing.assert_array_equal(ds.val_images, splits.usage(val_usage)[0])
    np.testing.assert_array_equal(ds.test_labels, splits.usage(other)[1])
    np.testing.assert_array_equal(ds.train_images, splits.training[0])
    assert ds.class_names == data.EMOTIONS


def test_default_validation_split_is_the_reference_codes_private_test(tmp_path):
    splits = data.load_csv(_write_csv(tmp_path / "f.csv", _faces()))
    ds = data.make_dataset(splits)
    assert data.DEFAULT_VAL_USAGE == "PrivateTest"
    assert (ds.val_usage, ds.test_usage) == ("PrivateTest", "PublicTest")
    with pytest.raises(ValueError, match="--val_usage must be one of PrivateTest, PublicTest"):
        data.make_dataset(splits, "Validation")


def _csv_with(tmp_path, mutate):
    faces = _faces()
    path = _write_csv(tmp_path / "f.csv", faces, extra_column=False)
    lines = open(path).read().splitlines()
    lines = mutate(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _replace_field(line, index, value):
    fields = next(csv.reader([line]))
    fields[index] = value
    return ",".join(f'"{x}"' if " " in x else x for x in fields)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ls: ["emotion,image,Usage"] + ls[1:], r"lacks the columns \['pixels'\]"),
        (lambda ls: ls[:1] + [_replace_field(ls[1], 0, "7")] + ls[2:], "emotion 7 is outside 0..6"),
        (
            lambda ls: ls[:1] + [_replace_field(ls[1], 0, "happy")] + ls[2:],
            "emotion must be an integer",
        ),
        (
            lambda ls: ls[:1] + [_replace_field(ls[1], 2, "Validation")] + ls[2:],
            "Usage 'Validation' is not one of Training, PublicTest, PrivateTest",
        ),
        (
            lambda ls: ls[:2] + [_replace_field(ls[2], 1, "1 2 3")] + ls[3:],
            "3 pixels; every row needs the same square count",
        ),
        (
            lambda ls: (
                ls[:1] + [_replace_field(ls[1], 1, " ".join(["300"] * SIDE * SIDE))] + ls[2:]
            ),
            r"pixel values must be in 0\.\.255",
        ),
        (
            lambda ls: [ls[0]] + [x for x in ls[1:] if not x.endswith("PublicTest")],
            "no rows with Usage 'PublicTest'",
        ),
    ],
    ids=[
        "column",
        "label-range",
        "label-type",
        "usage",
        "pixel-count",
        "pixel-range",
        "missing-usage",
    ],
)
def test_bad_csv_fails_with_a_clear_message(tmp_path, mutate, message):
    with pytest.raises(DataError, match=message):
        data.load_csv(_csv_with(tmp_path, mutate))


def test_missing_csv_or_two_sources_fail(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        data.load_csv(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="exactly one of --data_dir"):
        data.load(str(tmp_path), str(tmp_path / "f.csv"))
    with pytest.raises(DataError, match="exactly one of --data_dir"):
        data.load()


def _break_rename(root, old, new):
    (root / old).rename(root / new)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: _break_rename(r, "val", "valid"), "has no 'val' folder"),
        (lambda r: _break_rename(r, "train/happy", "train/joy"), "unknown emotion folder"),
        (lambda r: [p.unlink() for p in (r / "test" / "fear").iterdir()], "holds no images"),
        (
            lambda r: Image.fromarray(np.zeros((SIDE + 2, SIDE), np.uint8)).save(
                r / "train" / "sad" / "odd.png"
            ),
            "must all be one square size",
        ),
        (
            lambda r: (r / "val" / "angry" / "broken.jpg").write_bytes(b"not an image"),
            "cannot read the image",
        ),
    ],
    ids=["split", "emotion", "empty", "size", "unreadable"],
)
def test_bad_folder_fails_with_a_clear_message(tmp_path, damage, message):
    root = tmp_path / "imgs"
    _write_folder(root, _faces())
    damage(root)
    with pytest.raises(DataError, match=message):
        data.load_folder(str(root))


def test_missing_folder_and_missing_emotion_fail(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        data.load_folder(str(tmp_path / "nope"))
    root = tmp_path / "imgs"
    _write_folder(root, _faces())
    for p in (root / "train" / "disgust").iterdir():
        p.unlink()
    (root / "train" / "disgust").rmdir()
    with pytest.raises(DataError, match=r"lacks the emotion folders \['disgust'\]"):
        data.load_folder(str(root))


# ---------------------------------------------------------------------------------------------
# Augmentation and TenCrop.


def _numpy_ten_crop(image, crop):
    """torchvision TenCrop order, written out: five crops, then the five of the mirror image."""
    size = image.shape[0]
    c = int(round((size - crop) / 2))
    boxes = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop), (c, c)]
    out = []
    for im in (image, image[:, ::-1]):
        out += [im[top : top + crop, left : left + crop] for top, left in boxes]
    return np.stack(out)


def test_ten_crop_matches_torchvision_order():
    images = np.random.RandomState(0).randint(0, 256, (3, 9, 9, 2)).astype(np.uint8)
    views = np.asarray(augment.ten_crop(jnp.asarray(images), 6))
    assert views.shape == (3, 10, 6, 6, 2)
    for b in range(3):
        np.testing.assert_array_equal(views[b], _numpy_ten_crop(images[b], 6))
    eval_views = augment.eval_views(jnp.asarray(images), crop=6)
    assert eval_views.dtype == jnp.float32
    np.testing.assert_array_equal(eval_views, views.astype(np.float32))


@pytest.mark.parametrize("num_crops", [1, 10])
def test_train_views_shape_range_and_key_determinism(num_crops):
    images = jnp.asarray(np.random.RandomState(0).randint(1, 256, (4, SIDE, SIDE, 1)), jnp.uint8)
    views_of = jax.jit(
        lambda step: augment.train_views(  # the loop keys by (seed, step)
            jax.random.fold_in(jax.random.key(3), step), images, crop=8, num_crops=num_crops
        )
    )
    views = views_of(17)
    assert views.shape == (4, num_crops, 8, 8, 1) and views.dtype == jnp.float32
    assert float(views.min()) >= 0.0 and float(views.max()) <= 255.0
    np.testing.assert_array_equal(views, views_of(17))
    assert not np.array_equal(views, views_of(18))
    with pytest.raises(ValueError, match="num_crops must be 1 or 10"):
        augment.train_views(jax.random.key(0), images, crop=8, num_crops=5)


def _geometry(images, **kw):
    return jax.jit(lambda k: augment.random_geometry(k, images, **kw))(jax.random.key(0))


def test_geometry_of_the_whole_box_is_the_image_or_its_mirror_shifted():
    images = np.random.RandomState(0).randint(1, 256, (16, SIDE, SIDE, 1)).astype(np.uint8)
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = np.asarray(_geometry(jnp.asarray(images), translate=0.0, degrees=0.0, **whole))
    flipped = [np.array_equal(o, im[:, ::-1]) for o, im in zip(out, images)]
    assert all(f or np.array_equal(o, im) for f, o, im in zip(flipped, out, images))
    assert 0 < sum(flipped) < 16  # each image flipped with probability 1/2

    out = np.asarray(_geometry(jnp.asarray(images), translate=0.25, degrees=0.0, **whole))

    def shifted(im, dy, dx):  # translate by (dy, dx), zeros brought in
        res = np.zeros_like(im)
        res[max(dy, 0) : SIDE + min(dy, 0), max(dx, 0) : SIDE + min(dx, 0)] = im[
            max(-dy, 0) : SIDE - max(dy, 0), max(-dx, 0) : SIDE - max(dx, 0)
        ]
        return res

    moved = 0
    for o, im in zip(out, images):
        matches = [
            (dy, dx)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            for src in (im, im[:, ::-1])
            if np.array_equal(o, shifted(src, dy, dx))
        ]
        assert matches, "not a shifted copy of the image or its mirror"
        moved += matches[0] != (0, 0)
    assert moved > 0


def test_geometry_rotation_keeps_the_centre_pixel_and_the_frame_size():
    side = SIDE + 1  # odd: the rotation centre is a pixel
    images = np.random.RandomState(0).randint(1, 256, (16, side, side, 1)).astype(np.uint8)
    out = np.asarray(
        _geometry(
            jnp.asarray(images), scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.0, degrees=30.0
        )
    )
    c = side // 2
    np.testing.assert_allclose(out[:, c, c], images[:, c, c], atol=1e-3)
    assert out.shape == images.shape
    assert (out == 0).any()  # rotated corners are filled with 0


def test_random_erasing_zeroes_one_rectangle_in_about_half_the_views():
    views = jnp.full((400, 1, 20, 20, 1), 7.0)
    out = np.asarray(jax.jit(augment.random_erasing)(jax.random.key(0), views))[:, 0, :, :, 0]
    erased = out == 0
    fraction = erased.reshape(400, -1).any(1).mean()
    assert 0.4 < fraction < 0.6
    for mask in erased[erased.reshape(400, -1).any(1)]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == len(rows) * len(cols)  # a filled rectangle
        assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
        assert len(rows) < 20 and len(cols) < 20
        assert 0.02 * 400 * 0.5 <= mask.sum() <= 0.33 * 400 * 2  # area near scale (0.02, 0.33)
    assert set(np.unique(out)) <= {0.0, 7.0}


# ---------------------------------------------------------------------------------------------
# The model.


def test_reference_vgg_has_the_reference_parameter_count_and_cost():
    model = models.VGG()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 1))))
    params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    bn = sum(x.size for x in jax.tree.leaves(shapes["batch_stats"]))
    # PyTorch Vgg(): 8 convs (3x3, bias) 4,684,224 + 8 BN (weight, bias) 3,840 + linear layers
    # 2048*4096+4096, 4096*4096+4096, 4096*7+7.
    assert params == 4_684_224 + 3_840 + 8_392_704 + 16_781_312 + 28_679
    assert bn == 3_840
    assert models.multiply_adds() == pytest.approx(350.5e6, rel=1e-3)
    out = jax.eval_shape(
        lambda: model.apply(jax.tree.map(jnp.zeros_like, shapes), jnp.zeros((3, 40, 40, 1)))
    )
    assert out.shape == (3, 7)


def test_dropout_is_active_only_in_training():
    model = models.VGG(width=2, hidden=16, dropout=0.5)
    x = jnp.asarray(np.random.RandomState(0).rand(4, 16, 16, 1), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    train = jax.jit(
        lambda k: model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(k)}
        )[0]
    )
    assert not np.allclose(train(1), train(2))
    evaluate = jax.jit(lambda: model.apply(variables, x))
    np.testing.assert_array_equal(evaluate(), evaluate())


# ---------------------------------------------------------------------------------------------
# The shared loop's validation options: reduce-on-plateau, best-validation checkpoint, per-class
# accuracy, views (TenCrop) in training and evaluation.


def _torch_reduce_on_plateau(accuracies, factor, patience, threshold=1e-4):
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode='max', threshold_mode='rel', cooldown=0):
    the lr multiplier in effect after each epoch's step(accuracy), written out."""
    best, bad, scale, out = -np.inf, 0, 1.0, []
    for a in accuracies:
        if a > best * (1 + threshold):
            best, bad = a, 0
        else:
            bad += 1
        if bad > patience:
            scale, bad = scale * factor, 0
        out.append(scale)
    return out


@pytest.mark.parametrize("patience", [0, 2, 5])
def test_plateau_scale_follows_pytorch_reduce_lr_on_plateau(patience):
    spec = plateau.PlateauSpec(0.75, patience)
    tx = plateau.scale_by_plateau(optax.sgd(1.0), spec)
    step = jax.jit(lambda s, a: plateau.epoch_update(spec, s, a))
    rng = np.random.RandomState(patience)
    n = 3589  # validation faces: accuracies move in steps of 1/n
    for _ in range(3):
        accuracies = np.round(np.clip(0.3 + np.cumsum(rng.randn(40) * 0.01 + 0.002), 0, 1) * n) / n
        state, ours = tx.init({"w": jnp.zeros(3)}), []
        for a in accuracies:
            state = step(state, a)
            ours.append(float(plateau.current_scale(state)))
        expected = _torch_reduce_on_plateau(accuracies, 0.75, patience)
        np.testing.assert_allclose(ours, expected, rtol=1e-6)  # float32 scale
        assert expected[-1] < 1.0  # the sequence reaches at least one reduction
    # The scale multiplies the wrapped transformation's updates.
    updates, _ = tx.update({"w": jnp.ones(3)}, state, {"w": jnp.zeros(3)})
    np.testing.assert_allclose(updates["w"], -expected[-1])


class _Linear(nn.Module):
    """Flattened pixels -> dense (no random or BatchNorm state): fixed parameters give a fixed
    validation accuracy."""

    num_classes: int = 7

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _synthetic(n_train=32, n_eval=16, side=16, val=True) -> memory.Dataset:
    rng = np.random.RandomState(0)

    def split(n):
        return (
            rng.randint(0, 256, (n, side, side, 1)).astype(np.uint8),
            (np.arange(n) % 7).astype(np.int32),
        )

    train_split, test_split, val_split = split(n_train), split(n_eval), split(n_eval)
    return memory.Dataset(
        *train_split, *test_split, data.EMOTIONS, "synthetic", *(val_split if val else (None, None))
    )


@pytest.fixture
def linear_task(monkeypatch):
    """The FER2013 task (TenCrop views, multiview evaluators) with `_Linear` as its model."""
    monkeypatch.setattr(
        fer_task, "make_model", lambda config, num_classes, mesh: _Linear(num_classes)
    )


def _loop_config(tmp_path, val=True, **overrides):
    """The VGG recipe on `_synthetic()` (an arrays file) with one crop of 16 of the 16x16 faces
    per training image, 3 epochs of 4 steps, no weight decay."""
    npz = str(tmp_path / ("fer.npz" if val else "fer_noval.npz"))
    memory.save_npz(npz, _synthetic(val=val))
    base = dict(
        data__npz=npz,
        epochs=3,
        batch_size=8,
        eval_batch_size=8,
        data__crop=16,
        data__train_crops=1,
        optimizer__weight_decay=0.0,
    )
    return load_config("fer2013", "vgg", **{**base, **overrides})


def _records(workdir) -> list:
    return [json.loads(x) for x in open(os.path.join(str(workdir), "metrics.jsonl"))]


@pytest.mark.slow
def test_loop_reduces_on_plateau_and_keeps_the_best_validation_state(tmp_path, linear_task):
    # A learning rate so small that no parameter moves (float32): the validation accuracy is
    # the same every epoch, so no epoch after the first improves.
    config = _loop_config(
        tmp_path, optimizer__learning_rate=1e-30, plateau__factor=0.5, plateau__patience=0
    )
    workdir = tmp_path / "run"
    result = loop.train_and_evaluate(config, str(workdir))
    records = _records(workdir)
    # Epoch 1 improves on nothing; epochs 2 and 3 do not improve: with patience 0 each halves
    # the scale after its evaluation, so epoch 3 trained at half the learning rate.
    assert [r["learning_rate"] for r in records] == pytest.approx([1e-30, 1e-30, 5e-31])
    assert float(plateau.current_scale(result.state.opt_state)) == pytest.approx(0.25)
    assert len({r["val/top1"] for r in records}) == 1
    s = result.summary
    assert s["best/epoch"] == 1 and s["best/value"] == records[0]["val/top1"]
    assert s["val/top1"] == records[-1]["val/top1"]
    assert s["test/top1@best"] == s["test/top1"]  # same parameters
    assert (workdir / "checkpoints_best").is_dir() and (workdir / "test_confusion.png").exists()
    confusion = np.asarray(s["test/confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 16
    np.testing.assert_allclose(s["test/per_class_accuracy"], np.diag(confusion) / confusion.sum(1))
    assert np.trace(confusion) / 16 == pytest.approx(s["test/top1"])
    for key in ("val/top1", "val/top5", "val/nll", "val/ece", "val/view_top1", "test/top1"):
        assert key in records[0]


@pytest.mark.slow
def test_best_validation_checkpoint_is_the_best_epoch_and_resume_is_exact(tmp_path, linear_task):
    config = _loop_config(
        tmp_path, optimizer__learning_rate=0.05, plateau__factor=0.5, plateau__patience=1
    )
    full = loop.train_and_evaluate(config, str(tmp_path / "full"))
    part = loop.train_and_evaluate(
        cfg.apply_overrides(config, {"run.stop_after_steps": 6}), str(tmp_path / "resumed")
    )
    assert part.status == loop.STOPPED
    resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = _records(tmp_path / "full")
    best = int(np.argmax([r["val/top1"] for r in records])) + 1  # first epoch of the maximum
    for s in (full.summary, resumed.summary):
        assert s["best/epoch"] == best
        assert s["best/value"] == max(r["val/top1"] for r in records)
        assert s["test/top1@best"] == pytest.approx(records[best - 1]["test/top1"])


def test_plateau_and_best_need_a_validation_split(tmp_path, linear_task):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config.evals.val.split: 'val' is not a split"):
        loop.train_and_evaluate(
            _loop_config(tmp_path, val=False, plateau__factor=0.5), str(workdir)
        )
    with pytest.raises(ValueError, match=r"config.plateau.factor must be in \[0, 1\)"):
        loop.train_and_evaluate(_loop_config(tmp_path, plateau__factor=1.5), str(workdir))
    config = _loop_config(tmp_path, plateau__factor=0.5)
    with config.unlocked():
        del config.evals["val"]
    with pytest.raises(ValueError, match="names no evaluator of config.evals"):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_confusion_counts_match_sklearn():
    from sklearn.metrics import confusion_matrix  # pylint: disable=g-import-not-at-top

    rng = np.random.RandomState(0)
    logits = rng.randn(50, 7).astype(np.float32)
    labels = rng.randint(0, 7, 50).astype(np.int32)
    mask = rng.rand(50) > 0.2
    logits[3] = np.nan  # not counted, like a padded example
    sums = classification.batch_sums(
        jnp.asarray(logits), jnp.asarray(labels), example_mask=jnp.asarray(mask), confusion=True
    )
    keep = mask & np.isfinite(logits).all(1)
    expected = confusion_matrix(labels[keep], logits[keep].argmax(1), labels=range(7))
    np.testing.assert_array_equal(sums["confusion"], expected)
    summary = classification.finalize(jax.device_get(sums))
    np.testing.assert_allclose(summary["per_class_accuracy"], np.diag(expected) / expected.sum(1))


def _numpy_ten_crop_batch(images, crop):
    return np.stack([_numpy_ten_crop(im, crop) for im in np.asarray(images)])


def test_ten_crop_evaluation_is_the_mean_of_the_ten_crops_logits():
    """The multiview evaluator on a source with TenCrop evaluation views: an example's logits
    are the mean of its ten crops' logits, and its metrics are those of the mean logits."""
    model, mesh = _Linear(), parallel.make_mesh()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (6, 20, 20, 1)).astype(np.uint8)
    labels = (np.arange(6) % 7).astype(np.int32)
    dataset = memory.Dataset(images, labels, images, labels, data.EMOTIONS, "synthetic")
    source = memory.ArraySource(dataset, eval_views=functools.partial(augment.eval_views, crop=16))
    assert source.input_shape == (16, 16, 1)
    state = steps.init_state(
        model, optax.sgd(0.1), jnp.zeros((1, 16, 16, 1)), jax.random.key(0), 7, losses.LossSpec()
    )
    plain = steps.make_logits_fn(model, mean=(0.0,), std=(1.0,), compute_dtype=jnp.float32)
    config = load_config("fer2013", "vgg")
    context = evaluators.Context(
        config, source, model, plain, mesh, parallel.replicated(mesh), 7, 15, 4, 0, ""
    )
    evaluator = classification.Multiview("test", config.evals.test, context)
    got = jax.jit(evaluator.logits_of)(state, augment.eval_views(jnp.asarray(images[:3]), crop=16))
    crops = _numpy_ten_crop_batch(images[:3], 16).astype(np.float32)
    each = np.stack(
        [
            np.asarray(
                jax.jit(model.apply)({"params": state.params}, jnp.asarray(crops[:, v]) / 255.0)
            )
            for v in range(10)
        ],
        1,
    )
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, each.mean(1), rtol=1e-5, atol=1e-5)
    assert not np.allclose(each[:, 0], each[:, 5])  # the crops do differ
    scalars, details = evaluator.run(state)  # eval batch 4: 6 faces and 2 padded
    crops = _numpy_ten_crop_batch(images, 16).astype(np.float32) / 255.0
    each = np.stack(
        [
            np.asarray(model.apply({"params": state.params}, jnp.asarray(crops[:, v])))
            for v in range(10)
        ],
        1,
    )
    assert scalars["count"] == 6
    assert scalars["top1"] == pytest.approx(np.mean(each.mean(1).argmax(1) == labels))
    assert scalars["view_top1"] == pytest.approx(np.mean(each.argmax(2) == labels[:, None]))
    assert np.asarray(details["confusion"]).sum() == 6


def test_train_step_trains_every_view_with_its_image_label():
    model, mesh = _Linear(), parallel.make_mesh()
    images = np.random.RandomState(0).randint(0, 256, (8, 4, 4, 1)).astype(np.uint8)
    labels = np.arange(8, dtype=np.int32) % 7

    # Two views per image: the image and its negative; the step sees 16 examples.
    def views(key, im):
        return jnp.stack(
            [
                im.astype(jnp.float32),
                255.0 - im.astype(jnp.float32),
            ],
            axis=1,
        )

    source = memory.ArraySource(
        memory.Dataset(images, labels, images, labels, data.EMOTIONS), train_views=views
    )
    batch = next(source.train_batches(batch_size=8, start_step=0, num_steps=1, mesh=mesh, seed=0))
    x, y = np.asarray(batch["image"]), np.asarray(batch["label"])
    assert x.shape == (16, 4, 4, 1) and y.shape == (16,)
    seen = []
    for j in range(8):  # views of one image are adjacent and carry its label
        (i,) = [i for i in range(8) if np.array_equal(x[2 * j], images[i])]
        np.testing.assert_array_equal(x[2 * j + 1], 255.0 - images[i])
        assert y[2 * j] == y[2 * j + 1] == labels[i]
        seen.append(i)
    assert sorted(seen) == list(range(8))  # the epoch's permutation: every image once
    tx, spec = optax.sgd(0.0), losses.LossSpec()
    state = steps.init_state(model, tx, jnp.zeros((1, 4, 4, 1)), jax.random.key(0), 7, spec)
    step = jax.jit(
        steps.make_train_step(
            model=model,
            tx=tx,
            loss_spec=spec,
            lr_fn=optax.constant_schedule(0.0),
            steps_per_epoch=1,
            mean=(0.0,),
            std=(1.0,),
            compute_dtype=jnp.float32,
        )
    )
    new_state, _ = step(state, batch, jax.random.key(2))
    logits = model.apply({"params": state.params}, jnp.asarray(x / 255.0))
    expected = gsc_jax.cross_entropy(logits, jnp.asarray(y))
    np.testing.assert_allclose(new_state.epoch_sums["loss"], np.mean(expected), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad configurations, Table 6, and the command line end to end.


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"loss__gsc__gamma": 0.01, "loss__gsc__top_c": 8},
            r"config.loss.gsc.top_c must be in \[1, num_classes=7\]",
        ),
        (
            {"data__val_usage": "Test"},
            "config.data.val_usage must be one of PrivateTest, PublicTest",
        ),
        ({"data__train_crops": 5}, "config.data.train_crops must be 1 or 10"),
        ({"data__crop": 8}, "config.data.crop must be an integer >= 16"),
        ({"data__crop": 24}, "config.data.crop 24 exceeds the 20x20 faces"),
        ({"model__width": 0}, "config.model.width must be a positive integer"),
        ({"epochs": 0}, "config.epochs must be a positive integer"),
        ({"optimizer__learning_rate": -0.1}, "config.optimizer.learning_rate must be a positive"),
        ({"data__label_noise": 1.0}, r"config.data.label_noise must be in \[0, 1\)"),
        ({"data__num_eval_examples": -1}, "config.data.num_eval_examples must be an integer >= 0"),
        ({"data__npz": "x.npz"}, "set exactly one of config.data.data_dir"),
    ],
)
def test_bad_run_config_fails_before_training(overrides, message, tmp_path):
    csv_path = _write_csv(tmp_path / "f.csv", _faces(side=20))
    config = load_config("fer2013", "vgg", data__csv=csv_path, **{**TINY, **overrides})
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_run_identity_holds_the_recipe_without_the_epochs():
    """A resume compares the config without `config.resumable` (the epoch count among them, so
    that more epochs extend a run): a FER2013 run's width is part of it, its epochs are not."""
    one = cfg.identity(load_config("fer2013", "vgg", epochs=1))
    three = cfg.identity(load_config("fer2013", "vgg", epochs=3))
    wider = cfg.identity(load_config("fer2013", "vgg", epochs=3, model__width=4))
    assert one == three and "epochs" not in one
    assert three != wider and wider["model"]["width"] == 4


def test_departures_and_usages_in_the_summary_info():
    config = load_config("fer2013", "vgg", epochs=1, data__val_usage="PublicTest")
    info = fer_task.info(config)
    assert (info["val_usage"], info["test_usage"]) == ("PublicTest", "PrivateTest")
    assert "epochs: 1 (recipe 300)" in info["departures"]
    assert not any(d.startswith("model.width") for d in info["departures"])


def _table6():
    return cfg.load(os.path.join(REPO, "experiments/fer2013/configs/table6.py"))


def test_table6_reports_mean_and_std_over_seeds_and_plots_fig7(tmp_path, monkeypatch):
    """The table's arithmetic and layout, on stand-in runs (training is tested below)."""
    accuracy = {("ce", 0): 0.60, ("ce", 1): 0.62, ("gsc_0.01_2", 0): 0.61, ("gsc_0.01_2", 1): 0.65}

    def fake_run(config, workdir, seeds=None):
        assert seeds is None
        row = os.path.basename(workdir).rsplit("_s", 1)[0]
        acc = accuracy[(row, config.seed)]
        os.makedirs(workdir)
        records = [
            {"epoch": e, "train/loss": 1.5 / e, "val/nll": 1.2, "val/top1": acc} for e in (1, 2)
        ]
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        summary = {
            "status": "completed",
            "epochs": 2,
            "test/top1": acc,
            "test/top1@best": acc - 0.01,
            "val/top1": acc + 0.01,
            "best/value": acc + 0.02,
            "test/ece": 0.05,
            "test/nll": 1.0,
            "test/per_class_accuracy": [acc] * 7,
        }
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return loop.RunResult(None, summary)

    monkeypatch.setattr(loop, "train_and_evaluate", fake_run)
    config, table = _table6()
    import dataclasses  # pylint: disable=import-outside-toplevel

    table = dataclasses.replace(table, seeds=(0, 1))
    text = grid.run(table, config, str(tmp_path), rows=("gsc_0.01_2", "ce"))
    lines = text.splitlines()
    ce = next(line for line in lines if line.startswith("| ce | CE |"))
    gsc = next(line for line in lines if line.startswith("| gsc_0.01_2 |"))
    # Sample std of (60, 62) is sqrt(2) = 1.41; of (61, 65) 2.83. The paper's beside ours.
    assert ce == (
        "| ce | CE | 61.00 ± 1.41 | 60.00 ± 1.41 | 72.12 | 62.00 ± 1.41 | 73.82 "
        "| 63.00 ± 1.41 | 5.00 ± 0.00 | 1.0000 ± 0.0000 |"
    )
    assert gsc == (
        "| gsc_0.01_2 | CE+GSC(0.01,2) | 63.00 ± 2.83 | 62.00 ± 2.83 | 72.72 "
        "| 64.00 ± 2.83 | 73.25 | 65.00 ± 2.83 | 5.00 ± 0.00 | 1.0000 ± 0.0000 |"
    )
    assert text.index("| ce |") < text.index("| gsc_0.01_2 |")  # the paper's order
    assert all(
        line.count("not run") == 6
        for line in lines
        if line.startswith(("| gsc_0.015_2 ", "| gsc_0.01_3 ", "| gsc_0.02_3 "))
    )
    per_class = next(line for line in lines if line.startswith("| CE | 61.0 |"))
    assert per_class.count("61.0") == 7
    assert (tmp_path / "fig7.png").stat().st_size > 0
    saved = grid.results_json(str(tmp_path), "table6")
    assert [r["row"] for r in saved["rows"]][:2] == ["ce", "gsc_0.01_2"]
    assert saved["rows"][0]["values"]["test/top1"] == [0.60, 0.62]
    with pytest.raises(ValueError, match="unknown rows"):
        grid.check_rows(table, ["ce", "gsc_9"])


CLI_TINY = [
    "--config.epochs=1",
    "--config.batch_size=8",
    "--config.data.crop=16",
    "--config.model.width=2",
    "--config.model.hidden=8",
    "--config.eval_batch_size=4",
    "--config.run.progress=False",
]
# Faces of side 32: a 16x16 crop reaches the dense layers as 1x1 features, a whole face as 2x2,
# so a model initialised on whole faces would fail on crops.
CLI_SIDE = 32


@pytest.mark.slow
def test_cli_table6_row_trains_end_to_end_and_writes_the_table(tmp_path):
    csv_path = _write_csv(tmp_path / "fer2013.csv", _faces(side=CLI_SIDE))
    work = tmp_path / "work"
    out = run_module(
        [
            "experiments.fer2013",
            "--config",
            os.path.join(REPO, "experiments/fer2013/configs/table6.py"),
            f"--workdir={work}",
            f"--config.data.csv={csv_path}",
            "--rows=gsc_0.01_2",
            *CLI_TINY,
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = (work / "table6.md").read_text()
    rows = [line for line in table.splitlines() if "CE+GSC(0.01,2)" in line]
    assert len(rows) == 2 and "| 72.72 |" in rows[0]  # accuracy and per-class tables
    assert rows[1].startswith("| CE+GSC(0.01,2) |") and rows[1].count("|") == 9
    summary = json.loads((work / "table6" / "gsc_0.01_2" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["val_usage"] == "PrivateTest" and summary["test_usage"] == "PublicTest"
    assert summary["num_train_examples"] == 16 and summary["num_val_examples"] == 8
    assert len(summary["test/per_class_accuracy"]) == 7
    assert "epochs: 1 (recipe 300)" in summary["departures"]
    (record,) = _records(work / "table6" / "gsc_0.01_2")
    assert {"train/loss", "train/gsc_term", "val/top1", "val/nll", "test/top1"} <= set(record)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.data.train_crops=5"], "error: config.data.train_crops must be 1 or 10"),
        (["--config.data.csv=missing.csv"], "error: --csv 'missing.csv' is not a file"),
    ],
    ids=["crops", "csv"],
)
def test_cli_rejects_bad_input_before_training(args, message, tmp_path):
    csv_path = _write_csv(tmp_path / "fer2013.csv", _faces(side=20))
    flags = [f"--workdir={tmp_path / 'work'}", *CLI_TINY, *args]
    if not any(a.startswith("--config.data.csv") for a in args):
        flags.append(f"--config.data.csv={csv_path}")
    out = run_module(["experiments.fer2013", *flags])
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "work").exists()
