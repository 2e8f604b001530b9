"""FER2013: both data formats, the split flag, the on-device augmentation, TenCrop evaluation, the
VGG, bad input, and a tiny end-to-end run (generated faces in tmp_path; no real data needed)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.common.data import DataError
from experiments.fer2013 import augment, data, models

SIDE = 12  # generated faces are SIDE x SIDE (FER2013's are 48 x 48)
# Per usage, how many faces of each label (every emotion present in every split).
COUNTS = {"Training": (3, 1, 2, 3, 2, 2, 3), "PublicTest": (1,) * 7, "PrivateTest": (2, 1, 1, 1, 1,
                                                                                   1, 1)}
FOLDER_OF = {usage: split for split, usage in data.FOLDER_USAGE.items()}


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Tiny models: compile time dominates, so skip most XLA optimisations in this module."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _faces(seed=0, side=SIDE):
    """{usage: [(uint8 [side, side] face, label), ...]} with every face distinct."""
    rng = np.random.RandomState(seed)
    return {usage: [(rng.randint(0, 256, (side, side)).astype(np.uint8), label)
                    for label, n in enumerate(counts) for _ in range(n)]
            for usage, counts in COUNTS.items()}


def _write_csv(path, faces, extra_column=True):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"] + (["note"] if extra_column else []))
        rows = [(label, " ".join(map(str, face.ravel())), usage)
                for usage, items in faces.items() for face, label in items]
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
    from_folder = data.load_folder(_write_folder(tmp_path / "imgs", faces,
                                                 lambda k: data.EMOTIONS[k].capitalize()))
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


@pytest.mark.parametrize("mutate, message", [
    (lambda ls: ["emotion,image,Usage"] + ls[1:], r"lacks the columns \['pixels'\]"),
    (lambda ls: ls[:1] + [_replace_field(ls[1], 0, "7")] + ls[2:], "emotion 7 is outside 0..6"),
    (lambda ls: ls[:1] + [_replace_field(ls[1], 0, "happy")] + ls[2:],
     "emotion must be an integer"),
    (lambda ls: ls[:1] + [_replace_field(ls[1], 2, "Validation")] + ls[2:],
     "Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
    (lambda ls: ls[:2] + [_replace_field(ls[2], 1, "1 2 3")] + ls[3:],
     "3 pixels; every row needs the same square count"),
    (lambda ls: ls[:1] + [_replace_field(ls[1], 1, " ".join(["300"] * SIDE * SIDE))] + ls[2:],
     r"pixel values must be in 0\.\.255"),
    (lambda ls: [ls[0]] + [x for x in ls[1:] if not x.endswith("PublicTest")],
     "no rows with Usage 'PublicTest'"),
], ids=["column", "label-range", "label-type", "usage", "pixel-count", "pixel-range",
        "missing-usage"])
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


@pytest.mark.parametrize("damage, message", [
    (lambda r: _break_rename(r, "val", "valid"), "has no 'val' folder"),
    (lambda r: _break_rename(r, "train/happy", "train/joy"), "unknown emotion folder"),
    (lambda r: [p.unlink() for p in (r / "test" / "fear").iterdir()], "holds no images"),
    (lambda r: Image.fromarray(np.zeros((SIDE + 2, SIDE), np.uint8)).save(
        r / "train" / "sad" / "odd.png"), "must all be one square size"),
    (lambda r: (r / "val" / "angry" / "broken.jpg").write_bytes(b"not an image"),
     "cannot read the image"),
], ids=["split", "emotion", "empty", "size", "unreadable"])
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
        out += [im[t:t + crop, l:l + crop] for t, l in boxes]
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
    views_of = jax.jit(lambda step: augment.train_views(  # the loop keys by (seed, step)
        jax.random.fold_in(jax.random.key(3), step), images, crop=8, num_crops=num_crops))
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
        res[max(dy, 0):SIDE + min(dy, 0), max(dx, 0):SIDE + min(dx, 0)] = \
            im[max(-dy, 0):SIDE - max(dy, 0), max(-dx, 0):SIDE - max(dx, 0)]
        return res

    moved = 0
    for o, im in zip(out, images):
        matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) for src in
                   (im, im[:, ::-1]) if np.array_equal(o, shifted(src, dy, dx))]
        assert matches, "not a shifted copy of the image or its mirror"
        moved += matches[0] != (0, 0)
    assert moved > 0


def test_geometry_rotation_keeps_the_centre_pixel_and_the_frame_size():
    side = SIDE + 1  # odd: the rotation centre is a pixel
    images = np.random.RandomState(0).randint(1, 256, (16, side, side, 1)).astype(np.uint8)
    out = np.asarray(_geometry(jnp.asarray(images), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                               translate=0.0, degrees=30.0))
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
    out = jax.eval_shape(lambda: model.apply(jax.tree.map(jnp.zeros_like, shapes),
                                             jnp.zeros((3, 40, 40, 1))))
    assert out.shape == (3, 7)


def test_dropout_is_active_only_in_training():
    model = models.VGG(width=2, hidden=16, dropout=0.5)
    x = jnp.asarray(np.random.RandomState(0).rand(4, 16, 16, 1), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    train = jax.jit(lambda k: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(k)})[0])
    assert not np.allclose(train(1), train(2))
    evaluate = jax.jit(lambda: model.apply(variables, x))
    np.testing.assert_array_equal(evaluate(), evaluate())
