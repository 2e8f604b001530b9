"""Image-folder loading and caching, data errors, symmetric label noise, on-device augmentation."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.common import augment
from experiments.common.data import DataError
from experiments.common.data import memory


def _write_folder(root, sizes=(8, 8)):
    """train: 3 cat (PNG) + 2 dog (JPEG); test: 1 of each. Returns the written arrays by path."""
    rng = np.random.RandomState(0)
    written = {}
    for split, counts in (("train", {"cat": 3, "dog": 2}), ("test", {"cat": 1, "dog": 1})):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.randint(0, 255, (*sizes, 3)).astype(np.uint8)
                path = root / split / cls / f"{i}.{'png' if cls == 'cat' else 'jpg'}"
                Image.fromarray(arr).save(path)
                written[str(path)] = arr
    return written


def test_image_folder_loader_and_cache(tmp_path):
    written = _write_folder(tmp_path / "imgs")
    ds = memory.load_image_folder(str(tmp_path / "imgs"), str(tmp_path / "cache"))
    assert ds.class_names == ("cat", "dog")
    assert ds.train_images.shape == (5, 8, 8, 3) and ds.train_images.dtype == np.uint8
    assert sorted(ds.train_labels.tolist()) == [0, 0, 0, 1, 1]
    assert sorted(ds.test_labels.tolist()) == [0, 1]
    png = written[str(tmp_path / "imgs/test/cat/0.png")]
    cat = ds.test_labels.tolist().index(0)
    np.testing.assert_array_equal(ds.test_images[cat], png)  # PNG is lossless
    assert ds.source == str(tmp_path / "imgs")
    (cache,) = glob.glob(str(tmp_path / "cache" / "images-*.npz"))
    assert not glob.glob(str(tmp_path / "cache" / "*.tmp*"))  # written to a temporary, renamed
    again = memory.load_image_folder(str(tmp_path / "imgs"), str(tmp_path / "cache"))
    for a, b in zip(ds[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    with np.load(cache) as arrays:  # the second load read the cache: poison it, load again
        poisoned = {k: arrays[k] for k in arrays.files}
    poisoned["test_labels"] = 1 - poisoned["test_labels"]
    with open(cache, "wb") as f:
        np.savez(f, **poisoned)
    cached = memory.load_image_folder(str(tmp_path / "imgs"), str(tmp_path / "cache"))
    np.testing.assert_array_equal(cached.test_labels, 1 - ds.test_labels)


def _load(root):
    return memory.load_image_folder(str(root / "imgs"), str(root / "cache"))


def _by_label(ds):
    """{(split, label): sorted image checksums}: the split contents, whatever the order."""
    out = {}
    for split, images, labels in (
        ("train", ds.train_images, ds.train_labels),
        ("test", ds.test_images, ds.test_labels),
    ):
        for image, label in zip(images, labels):
            out.setdefault((split, int(label)), []).append(int(image.astype(np.int64).sum()))
    return {k: sorted(v) for k, v in out.items()}


def test_cache_follows_a_rewritten_image(tmp_path):
    _write_folder(tmp_path / "imgs")
    before = _load(tmp_path)
    path = tmp_path / "imgs/train/cat/1.png"
    new = np.full((8, 8, 3), 7, np.uint8)
    stat = os.stat(path)
    Image.fromarray(new).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock
    after = _load(tmp_path)
    assert any((image == new).all() for image in after.train_images)
    assert not any((image == new).all() for image in before.train_images)
    assert len(glob.glob(str(tmp_path / "cache" / "images-*.npz"))) == 1  # the stale one removed


def test_cache_follows_an_image_moved_between_classes(tmp_path):
    written = _write_folder(tmp_path / "imgs")
    before = _load(tmp_path)
    source = tmp_path / "imgs/train/cat/0.png"
    os.rename(source, tmp_path / "imgs/train/dog/moved.png")  # same size, same mtime
    after = _load(tmp_path)
    assert sorted(after.train_labels.tolist()) == [0, 0, 1, 1, 1]
    moved = int(written[str(source)].astype(np.int64).sum())
    assert moved in _by_label(before)[("train", 0)]
    assert moved in _by_label(after)[("train", 1)]


def test_cache_not_written_when_asked(tmp_path):
    _write_folder(tmp_path / "imgs")
    ds = memory.load_image_folder(
        str(tmp_path / "imgs"), str(tmp_path / "cache"), write_cache=False
    )
    assert len(ds.train_labels) == 5 and not (tmp_path / "cache").exists()


def _truncate(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, r"cannot decode '.*train/cat/1\.png' \(.*truncated.*\); replace or delete"),
        (
            lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n not an image"),
            r"cannot decode '.*train/cat/1\.png' \(.*\); replace or delete that file\.$",
        ),
        (
            lambda p: Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p),
            r"images in '.*train' have different sizes: 8x8 \(cat/0\.png\), 4x4 \(cat/1\.png\); "
            r"resize them",
        ),
    ],
    ids=["truncated", "corrupt", "mixed_sizes"],
)
def test_unreadable_images_name_the_file(tmp_path, damage, message):
    _write_folder(tmp_path / "imgs")
    damage(tmp_path / "imgs/train/cat/1.png")
    with pytest.raises(DataError, match=message) as error:
        _load(tmp_path)
    assert "\n" not in str(error.value)


def test_image_folder_splits_are_mixed_so_a_prefix_holds_every_class(tmp_path):
    # --config.data.num_train_examples / num_eval_examples take a prefix: class-sorted splits would give
    # one class (a smoke run on the first 1,000 test images would see airplanes only).
    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.randint(0, 255, (4, 4, 3)).astype(np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    ds = memory.load_image_folder(str(tmp_path), str(tmp_path / "cache"))
    for labels in (ds.train_labels, ds.test_labels):
        assert sorted(labels.tolist()) == [0] * 8 + [1] * 8 + [2] * 8
        assert set(labels[:8].tolist()) == {0, 1, 2}


def test_symmetric_label_noise_protocol():
    labels = np.repeat(np.arange(10), 100).astype(np.int32)
    noisy = memory.symmetric_label_noise(labels, 0.4, 10, seed=123)
    flipped = noisy != labels
    assert flipped.sum() == 400  # exact rate: the true class is never drawn
    assert np.all(np.bincount(labels[flipped], minlength=10) == 40)  # class balanced
    np.testing.assert_array_equal(noisy, memory.symmetric_label_noise(labels, 0.4, 10, seed=123))
    assert not np.array_equal(noisy, memory.symmetric_label_noise(labels, 0.4, 10, seed=1))
    np.testing.assert_array_equal(memory.symmetric_label_noise(labels, 0.0, 10), labels)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        memory.symmetric_label_noise(labels, 1.0, 10)


def test_random_crop_flip():
    images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1.0
    out = augment.random_crop_flip(jax.random.key(0), images, pad=2)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out, augment.random_crop_flip(jax.random.key(0), images, pad=2))
    same = augment.random_crop_flip(jax.random.key(3), images, pad=0)  # flip only
    for i in range(2):
        assert np.array_equal(same[i], images[i]) or np.array_equal(same[i], images[i, :, ::-1])
    # A crop is a shifted window of the zero-padded image: its values are 0 or from the image.
    values = set(np.unique(out).tolist())
    assert values <= set(np.unique(images).tolist()) | {0.0}


def test_digits_split():
    ds = memory.load_digits()
    assert (
        ds.train_images.shape[1:] == (8, 8, 1)
        and len(ds.train_labels) + len(ds.test_labels) == 1797
    )
    assert ds.num_classes == 10 and ds.train_images.max() == 255


def test_load_tfds_on_mocked_cifar10(tmp_path):
    """load_tfds reads both splits of (mocked) TFDS cifar10 into uint8/int32 arrays."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = memory.load_tfds("cifar10", str(tmp_path / "tfds"), chunk_size=5)
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (12, 32, 32, 3) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (12,) and ds.train_labels.dtype == np.int32
    assert ds.test_labels.shape == (12,) and ds.test_labels.dtype == np.int32
    assert ds.num_classes == 10  # the names are '0'..'9' here: label.txt is metadata, not mocked
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10
    assert len(np.unique(ds.train_images)) > 1  # real (random) pixels, not padding


def test_load_tfds_reads_each_split_in_order_across_chunks(tmp_path):
    """Split-specific fake data: the train and test arrays come from their own split, every example
    once and in order, whether or not the number of examples is a multiple of the chunk size."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    sizes = {"train": 13, "test": 7}

    def fake_split(split):
        n = sizes[str(split)]
        offset = 100 if str(split) == "test" else 0
        images = np.zeros((n, 32, 32, 3), np.uint8)
        images[:, 0, 0, 0] = offset + np.arange(n)
        labels = (np.arange(n) * 3 + (str(split) == "test")) % 10
        return images, labels.astype(np.int64)

    def as_dataset_fn(self, split, **kwargs):
        del self, kwargs
        images, labels = fake_split(split)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    for chunk_size in (4, 7, 10_000):
        with tfds.testing.mock_data(
            policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset_fn
        ):
            ds = memory.load_tfds("cifar10", str(tmp_path / "tfds"), chunk_size=chunk_size)
        for split, images, labels in (
            ("train", ds.train_images, ds.train_labels),
            ("test", ds.test_images, ds.test_labels),
        ):
            want_images, want_labels = fake_split(split)
            np.testing.assert_array_equal(images, want_images)
            np.testing.assert_array_equal(labels, want_labels.astype(np.int32))
            assert images.dtype == np.uint8 and labels.dtype == np.int32
        assert ds.num_classes == 10
