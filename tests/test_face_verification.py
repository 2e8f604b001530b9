"""The face-verification protocol: 10-fold accuracy, TAR@FAR, flip test, .bin / pairs.txt readers."""

import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.face import verification as v

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def embeddings_with_distances(dist):
    """Unit vectors [2P, 2] whose pair p has squared L2 distance dist[p] (2 - 2 cos(angle))."""
    angle = np.arccos(1 - np.asarray(dist, np.float64) / 2)
    e = np.zeros((2 * len(angle), 2))
    e[0::2, 0] = 1
    e[1::2, 0], e[1::2, 1] = np.cos(angle), np.sin(angle)
    return e


def brute_force_folds(dist, issame, num_folds, grid):
    """Per-fold threshold and held-out accuracy, by explicit loops (LFW 10-fold protocol)."""
    n = len(dist)
    base, extra = divmod(n, num_folds)
    bounds, start = [], 0
    for k in range(num_folds):
        size = base + (1 if k < extra else 0)
        bounds.append((start, start + size))
        start += size
    thresholds, accuracies = [], []
    for a, b in bounds:
        train = [p for p in range(n) if not a <= p < b]
        best_t, best_acc = None, -1.0
        for t in grid:
            acc = sum((dist[p] < t) == issame[p] for p in train) / len(train)
            if acc > best_acc:
                best_t, best_acc = t, acc
        thresholds.append(best_t)
        accuracies.append(sum((dist[p] < best_t) == issame[p] for p in range(a, b)) / (b - a))
    return np.array(thresholds), np.array(accuracies)


def png_bytes(color, size=8):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(int(c) for c in color)).save(buf, format="PNG")
    return buf.getvalue()


def random_png(rng, size=8):
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), pixels


# ----------------------------------------------------------------------------------------------
# evaluate


def test_perfectly_separable_pairs_score_one_with_the_smallest_separating_threshold():
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 0.0, 2.0)  # same: identical embeddings; different: orthogonal
    r = v.evaluate(embeddings_with_distances(dist), issame)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    np.testing.assert_array_equal(r["fold_accuracies"], np.ones(10))
    # d < t must accept d = 0: the smallest grid value above 0 is 0.01.
    np.testing.assert_allclose(r["fold_thresholds"], 0.01)
    assert r["tar"] == 1.0 and r["far"] == 0.0 and r["auc"] == 1.0


def test_known_threshold_accuracy():
    # Every fold: two same pairs at 0.505, a different pair at 1.505 and a hard one at 0.305.
    # Accepting d < t is best (3 of 4 right) for t in (0.505, 1.505]: t = 0.51 on the grid.
    fold = [0.505, 0.505, 1.505, 0.305]
    issame = np.array([True, True, False, False] * 10)
    r = v.evaluate(embeddings_with_distances(fold * 10), issame)
    np.testing.assert_allclose(r["fold_thresholds"], 0.51)
    np.testing.assert_allclose(r["fold_accuracies"], 0.75)
    assert r["accuracy"] == pytest.approx(0.75) and r["accuracy_std"] == pytest.approx(0.0)
    assert r["best_threshold"] == pytest.approx(0.51)


def test_thresholds_that_differ_between_folds_by_hand():
    # Fold 0 separates at (0.205, 0.605], fold 1 at (1.005, 1.405]: each fold's threshold comes
    # from the other one and gets half of its own pairs right.
    dist = [0.205, 0.205, 0.605, 0.605, 1.005, 1.005, 1.405, 1.405]
    issame = np.array([True, True, False, False] * 2)
    r = v.evaluate(embeddings_with_distances(dist), issame, num_folds=2)
    np.testing.assert_allclose(r["fold_thresholds"], [1.01, 0.21])
    np.testing.assert_allclose(r["fold_accuracies"], [0.5, 0.5])
    assert r["best_threshold"] == pytest.approx(0.61)


@pytest.mark.parametrize("num_pairs,num_folds", [(103, 10), (40, 3)])
def test_folds_match_brute_force(num_pairs, num_folds):
    rng = np.random.default_rng(num_pairs)
    issame = rng.random(num_pairs) < 0.5
    # The separating distance drifts along the pairs, so the folds disagree on the threshold.
    drift = np.linspace(0.4, 2.0, num_pairs)
    dist = np.clip(drift + np.where(issame, -0.3, 0.3) + 0.35 * rng.normal(size=num_pairs), 0, 4)
    e = embeddings_with_distances(dist) * rng.uniform(0.5, 3.0, size=(2 * num_pairs, 1))
    r = v.evaluate(e, issame, num_folds=num_folds)
    exact = v.pair_distances(embeddings_with_distances(dist))
    thresholds, accuracies = brute_force_folds(exact, issame, num_folds, v.THRESHOLDS)
    np.testing.assert_allclose(r["fold_thresholds"], thresholds)
    np.testing.assert_allclose(r["fold_accuracies"], accuracies)
    assert len(np.unique(thresholds)) > 1
    assert r["accuracy"] == pytest.approx(accuracies.mean())
    assert r["accuracy_std"] == pytest.approx(accuracies.std())
    assert r["best_threshold"] == pytest.approx(thresholds.mean())


def test_tar_at_far_known_answer():
    # 1000 different pairs: one at 0.3, one at 0.6, the rest at 2. Same pairs: three below 0.3,
    # two between 0.3 and 0.6, one tied with the different pair at 0.6, three above.
    different = [0.3, 0.6] + [2.0] * 998
    same = [0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.7, 1.0, 1.5]
    dist = np.array(different + same)
    issame = np.array([False] * len(different) + [True] * len(same))
    e = embeddings_with_distances(dist)
    # FAR <= 1e-3 admits the false accept at 0.3, not the tie at 0.6 (two false accepts).
    r = v.evaluate(e, issame, far_target=1e-3)
    assert r["tar"] == pytest.approx(5 / 9) and r["far"] == pytest.approx(1e-3)
    assert r["tar_threshold"] == pytest.approx(0.5)
    r = v.evaluate(e, issame, far_target=2e-3)
    # Two false accepts: every distance below the 998 different pairs at 2.
    assert r["tar"] == 1.0 and r["far"] == pytest.approx(2e-3)
    assert r["tar_threshold"] == pytest.approx(1.5)
    r = v.evaluate(e, issame, far_target=5e-4)
    assert r["tar"] == pytest.approx(3 / 9) and r["far"] == 0.0
    assert r["tar_threshold"] == pytest.approx(0.25)


def test_roc_and_auc_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    issame = rng.random(200) < 0.5
    dist = np.round(np.clip(np.where(issame, 0.8, 1.3) + 0.4 * rng.normal(size=200), 0, 4), 1)
    r = v.evaluate(embeddings_with_distances(dist), issame)
    exact = v.pair_distances(embeddings_with_distances(dist))
    assert r["auc"] == pytest.approx(metrics.roc_auc_score(issame, -exact))
    assert r["fpr"][0] == 0 and r["tpr"][0] == 0 and r["fpr"][-1] == 1 and r["tpr"][-1] == 1
    assert np.all(np.diff(r["fpr"]) >= 0) and np.all(np.diff(r["tpr"]) >= 0)
    for t, fpr, tpr in zip(r["roc_thresholds"][1:], r["fpr"][1:], r["tpr"][1:]):
        assert fpr == np.mean(exact[~issame] <= t) and tpr == np.mean(exact[issame] <= t)


def test_evaluate_rejects_bad_input():
    issame = np.array([True, False] * 5)
    e = embeddings_with_distances(np.where(issame, 0.5, 2.0))
    bad_nan = e.copy()
    bad_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite; row 3"):
        v.evaluate(bad_nan, issame)
    zero = e.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match="zero vector at row 4"):
        v.evaluate(zero, issame)
    with pytest.raises(ValueError, match="shape"):
        v.evaluate(e[:-1], issame[:-1])
    with pytest.raises(ValueError, match="issame must have shape"):
        v.evaluate(e, issame[:-1])
    with pytest.raises(ValueError, match="bool"):
        v.evaluate(e, np.where(issame, 2, 0))
    with pytest.raises(ValueError, match="one same pair and one different"):
        v.evaluate(e, np.ones(10, bool))
    with pytest.raises(ValueError, match="real float"):
        v.evaluate(e.astype(complex), issame)
    for folds in (1, 11, 2.0, True):
        with pytest.raises(ValueError, match="num_folds"):
            v.evaluate(e, issame, num_folds=folds)
    for target in (0.0, -1e-3, 1.5):
        with pytest.raises(ValueError, match="far_target"):
            v.evaluate(e, issame, far_target=target)
    assert v.evaluate(e, issame.astype(int), num_folds=10)["accuracy"] == 1.0


def test_fold_bounds_follow_kfold():
    assert v.fold_bounds(23, 5) == [(0, 5), (5, 10), (10, 15), (15, 19), (19, 23)]
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n, k in [(6000, 10), (103, 10), (7, 7)]:
        folds = model_selection.KFold(n_splits=k, shuffle=False).split(np.arange(n))
        assert v.fold_bounds(n, k) == [(int(t[0]), int(t[-1]) + 1) for _, t in folds]


# ----------------------------------------------------------------------------------------------
# embed_pairs


def test_embed_pairs_sums_the_flip_and_pads_the_last_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(7, 4, 8, 3), dtype=np.uint8)
    calls = []

    def left_half_mean(x):  # [B, S, W, 3] -> [B, 3]: mean colour of the left half
        calls.append(x.copy())
        return x[:, :, :4].reshape(len(x), -1, 3).mean(axis=1)

    out = v.embed_pairs(left_half_mean, images, batch_size=3, progress=False)
    # f(x) + f(flip(x)) is the left-half mean plus the right-half mean.
    expected = images[:, :, :4].reshape(7, -1, 3).mean(axis=1) + images[:, :, 4:].reshape(
        7, -1, 3
    ).mean(axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert out.shape == (7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert len(calls) == 6 and all(c.shape == (3, 4, 8, 3) for c in calls)
    np.testing.assert_array_equal(calls[-2][0], images[6])  # the last batch: image 6, then pad
    np.testing.assert_array_equal(calls[-2][1:], images[[0, 0]])
    np.testing.assert_array_equal(calls[1], images[:3, :, ::-1])


def test_embed_pairs_rejects_bad_input():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size"):
        v.embed_pairs(lambda x: np.ones((len(x), 2)), images, batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        v.embed_pairs(lambda x: np.ones((len(x), 2)), images.astype(np.float32), batch_size=2)
    with pytest.raises(ValueError, match=r"\[batch_size=2, D\]"):
        v.embed_pairs(lambda x: np.ones((1, 2)), images, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        v.embed_pairs(lambda x: np.full((len(x), 2), np.nan), images, batch_size=2, progress=False)


# ----------------------------------------------------------------------------------------------
# .bin files


def test_write_bin_load_bin_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    encoded, pixels = zip(*[random_png(rng) for _ in range(4)])
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (200, 40, 90)).save(buf, format="JPEG", quality=95)
    encoded = list(encoded) + [buf.getvalue(), png_bytes((1, 2, 3), size=16)]
    issame = [True, False, True]
    path = tmp_path / "lfw.bin"
    v.write_bin(path, encoded, issame)
    assert sorted(os.listdir(tmp_path)) == ["lfw.bin"]  # no temporary file left behind
    vset = v.load_bin(path, image_size=8)
    assert vset.name == "lfw" and vset.images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(vset.issame, issame)
    np.testing.assert_array_equal(vset.images[:4], np.stack(pixels))
    assert np.abs(vset.images[4].astype(int) - [200, 40, 90]).max() <= 4  # JPEG, resized
    np.testing.assert_array_equal(vset.images[5], np.broadcast_to([1, 2, 3], (8, 8, 3)))
    assert v.load_bin(path, image_size=8, name="x").name == "x"


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_bin_reads_numpy_byte_elements(tmp_path, protocol):
    rng = np.random.default_rng(2)
    encoded, pixels = zip(*[random_png(rng) for _ in range(4)])
    items = [
        np.bytes_(encoded[0]),
        np.frombuffer(encoded[1], np.uint8),
        bytearray(encoded[2]),
        encoded[3],
    ]
    path = tmp_path / "agedb_30.bin"
    with open(path, "wb") as f:
        pickle.dump((items, [np.bool_(True), False]), f, protocol=protocol)
    vset = v.load_bin(path, image_size=8)
    np.testing.assert_array_equal(vset.images, np.stack(pixels))
    np.testing.assert_array_equal(vset.issame, [True, False])
    # write_bin accepts the same element types and stores plain bytes.
    v.write_bin(tmp_path / "copy.bin", items, [True, False])
    assert v.read_bin(tmp_path / "copy.bin")[0] == list(encoded)


def test_load_bin_reads_a_python2_pickle(tmp_path):
    # Python 2 wrote str (bytes) with the BINSTRING opcode: a tuple (list of 2 strings, [True]).
    rng = np.random.default_rng(4)
    encoded, pixels = zip(*[random_png(rng) for _ in range(2)])
    body = b"".join(b"T" + struct.pack("<I", len(x)) + x for x in encoded)
    data = b"\x80\x02](" + body + b"e](\x88e\x86."
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(data)
    vset = v.load_bin(path, image_size=8)
    np.testing.assert_array_equal(vset.images, np.stack(pixels))
    np.testing.assert_array_equal(vset.issame, [True])


def test_load_bin_refuses_code_in_the_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {marker}",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Evil(), b"x"], [True])))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global .*system"):
        v.load_bin(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(([b"x", b"y"], [os.getcwd])))  # any other global too
    with pytest.raises(pickle.UnpicklingError, match=r"refused global .*getcwd"):
        v.read_bin(path)


@pytest.mark.parametrize(
    "payload,match",
    [
        ({"images": [], "issame": []}, "found dict"),
        (([b"a", b"b"], [True], [1]), "found tuple of length 3"),
        (([b"a", b"b", b"c"], [True]), "1 pairs need 2 images, the file holds 3"),
        (([b"a", 7], [True]), "image 1 must be a byte string, found int"),
        (([b"a", b"b"], [1]), "issame must be a sequence of bools, found int at index 0"),
        (([], []), "no pairs"),
    ],
)
def test_load_bin_rejects_the_wrong_structure(tmp_path, payload, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=match) as info:
        v.load_bin(path)
    assert "bad.bin" in str(info.value)


def test_load_bin_names_an_image_that_does_not_decode(tmp_path):
    path = tmp_path / "bad.bin"
    v.write_bin(path, [png_bytes((0, 0, 0)), b"not an image"], [False])
    with pytest.raises(ValueError, match="bad.bin: image 1: cannot decode"):
        v.load_bin(path, image_size=8)


def test_write_bin_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="2 pairs need 4"):
        v.write_bin(tmp_path / "x.bin", [b"a"] * 3, [True, False])
    with pytest.raises(ValueError, match="bools"):
        v.write_bin(tmp_path / "x.bin", [b"a"] * 2, [1])
    with pytest.raises(ValueError, match=r"encoded_images\[1\]"):
        v.write_bin(tmp_path / "x.bin", [b"a", "text"], [True])
    assert not os.listdir(tmp_path)


def test_verification_set_validates_shapes():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    assert v.VerificationSet("x", images, np.array([True, False])).num_pairs == 2
    with pytest.raises(ValueError, match="two images per pair"):
        v.VerificationSet("x", images, np.array([True]))
    with pytest.raises(ValueError, match=r"\[2P, S, S, 3\]"):
        v.VerificationSet("x", np.zeros((4, 8, 6, 3), np.uint8), np.array([True, False]))
    with pytest.raises(ValueError, match="uint8"):
        v.VerificationSet("x", images.astype(np.float32), np.array([True, False]))
    with pytest.raises(ValueError, match="bool"):
        v.VerificationSet("x", images, np.array([1, 0]))


# ----------------------------------------------------------------------------------------------
# pairs.txt


@pytest.fixture
def lfw_folder(tmp_path):
    """root/<name>/<name>_000i.png with a distinct random image each; returns (root, pixels)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "lfw"
    pixels = {}
    for name, count in [("Ann_A", 3), ("Bob_B", 1), ("Cy_C", 2)]:
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            data, pix = random_png(rng)
            (root / name / f"{name}_{i:04d}.png").write_bytes(data)
            pixels[(name, i)] = pix
    return root, pixels


PAIR_LINES = ["Ann_A\t1\t2", "Bob_B 1 Cy_C 2", "Cy_C 1 2", "Ann_A 3 Bob_B 1"]


@pytest.mark.parametrize("header", ["2 1\n", "", "\n"])
def test_load_pairs_reads_lfw_style_pairs(lfw_folder, tmp_path, header):
    root, pixels = lfw_folder
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(header + "\n".join(PAIR_LINES) + "\n")
    vset = v.load_pairs(pairs, root, image_size=8, extension="png", progress=False)
    assert vset.name == "lfw"
    np.testing.assert_array_equal(vset.issame, [True, False, True, False])
    order = [
        ("Ann_A", 1),
        ("Ann_A", 2),
        ("Bob_B", 1),
        ("Cy_C", 2),
        ("Cy_C", 1),
        ("Cy_C", 2),
        ("Ann_A", 3),
        ("Bob_B", 1),
    ]
    np.testing.assert_array_equal(vset.images, np.stack([pixels[k] for k in order]))


@pytest.mark.parametrize(
    "lines,match",
    [
        (["2 1"] + PAIR_LINES[:3], "line 1: the header '2 1' announces 4 pairs, the file lists 3"),
        (PAIR_LINES[:1] + ["Ann_A 1"] + PAIR_LINES[2:], "line 2: expected 'name i j'"),
        (PAIR_LINES[:2] + ["Cy_C 1 2 3 4"], "line 3: expected 'name i j'"),
        (PAIR_LINES[:2] + ["Cy_C 1 x"], "line 3: the image number must be a positive integer"),
        (["2 1"] + PAIR_LINES[:3] + ["Bob_B 1 2"], "line 5: missing image .*Bob_B_0002.png"),
        (PAIR_LINES[:1] + ["Ann_A 1 Dee_D 1"], "line 2: missing image .*Dee_D_0001.png"),
    ],
)
def test_load_pairs_names_the_line_of_a_problem(lfw_folder, tmp_path, lines, match):
    root, _ = lfw_folder
    (root / "Ann_A" / "Ann_A_0001.png").write_bytes(b"corrupt")  # never decoded: checks first
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match) as info:
        v.load_pairs(pairs, root, extension="png")
    assert "pairs.txt" in str(info.value)


def test_load_pairs_names_an_image_that_does_not_decode(lfw_folder, tmp_path):
    root, _ = lfw_folder
    (root / "Cy_C" / "Cy_C_0001.png").write_bytes(b"corrupt")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(PAIR_LINES) + "\n")
    with pytest.raises(ValueError, match="Cy_C_0001.png: cannot decode"):
        v.load_pairs(pairs, root, extension="png")


# ----------------------------------------------------------------------------------------------
# sample_pairs


@pytest.mark.parametrize("enumerate_limit", [v._ENUMERATE_LIMIT, 0])
def test_sample_pairs_is_balanced_deterministic_and_distinct(monkeypatch, enumerate_limit):
    monkeypatch.setattr(v, "_ENUMERATE_LIMIT", enumerate_limit)
    labels = np.repeat(np.arange(12), [1, 2, 3, 4, 5, 6, 2, 2, 3, 1, 1, 8])
    index, issame = v.sample_pairs(labels, 40, seed=7)
    assert index.shape == (40, 2) and issame.shape == (40,) and issame.dtype == bool
    assert issame.sum() == 20 and np.all(issame[0::2]) and not np.any(issame[1::2])
    np.testing.assert_array_equal(labels[index[:, 0]] == labels[index[:, 1]], issame)
    assert np.all(index[:, 0] < index[:, 1])  # no image paired with itself
    assert len({tuple(p) for p in index}) == 40
    again = v.sample_pairs(labels, 40, seed=7)
    np.testing.assert_array_equal(again[0], index)
    assert not np.array_equal(v.sample_pairs(labels, 40, seed=8)[0], index)


def test_sample_pairs_can_use_every_pair():
    labels = np.array([0, 0, 1, 1])  # 2 same pairs, 4 different pairs
    index, _ = v.sample_pairs(labels, 4, seed=0)
    assert {tuple(p) for p in index[0::2]} == {(0, 1), (2, 3)}


@pytest.mark.parametrize(
    "labels,num_pairs,match",
    [
        (np.zeros(10, int), 2, "different-identity pairs"),
        (np.arange(10), 2, "same-identity pairs"),
        (np.array([0, 0, 1, 1]), 6, "2 distinct same-identity pairs"),
        (np.array([0, 0, 1, 1]), 3, "even int"),
        (np.array([0, 0, 1, 1]), 0, "even int"),
        (np.array([0.0, 0.0, 1.0, 1.0]), 2, "integer"),
        (np.zeros((2, 2), int), 2, "1-D"),
    ],
)
def test_sample_pairs_rejects_impossible_requests(labels, num_pairs, match):
    with pytest.raises(ValueError, match=match):
        v.sample_pairs(labels, num_pairs, seed=0)


# ----------------------------------------------------------------------------------------------
# make_bin and plot_roc


def _run_make_bin(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.face.make_bin", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_bin_builds_a_bin_that_load_bin_reads(tmp_path):
    rng = np.random.default_rng(6)
    identity_of = {}
    for name, count in [("a", 3), ("b", 2), ("c", 1), ("d", 2)]:
        (tmp_path / "faces" / name).mkdir(parents=True)
        for i in range(count):
            data, _ = random_png(rng)
            (tmp_path / "faces" / name / f"{i}.png").write_bytes(data)
            identity_of[data] = name
    (tmp_path / "faces" / "a" / "notes.txt").write_text("not an image")
    out = tmp_path / "val.bin"
    done = _run_make_bin(
        "--image_dir", str(tmp_path / "faces"), "--out", str(out), "--num_pairs", "6", "--seed", "0"
    )
    assert done.returncode == 0, done.stderr
    encoded, issame = v.read_bin(out)
    assert all(x in identity_of for x in encoded)  # the files, byte for byte
    same = [identity_of[encoded[2 * p]] == identity_of[encoded[2 * p + 1]] for p in range(6)]
    np.testing.assert_array_equal(issame, same)
    assert issame.sum() == 3
    vset = v.load_bin(out, image_size=8)
    assert vset.images.shape == (12, 8, 8, 3)

    done = _run_make_bin(
        "--image_dir", str(tmp_path / "faces"), "--out", str(out), "--num_pairs", "100"
    )
    assert done.returncode != 0 and "error: " in done.stderr and "same-identity" in done.stderr
    done = _run_make_bin("--image_dir", str(tmp_path / "missing"), "--out", str(out))
    assert done.returncode != 0 and "is not a folder" in done.stderr


def test_plot_roc_writes_a_png(tmp_path):
    rng = np.random.default_rng(8)
    issame = np.array([True, False] * 50)
    dist = np.clip(np.where(issame, 0.8, 1.4) + 0.3 * rng.normal(size=100), 0, 4)
    r = v.evaluate(embeddings_with_distances(dist), issame)
    path = tmp_path / "roc.png"
    v.plot_roc({"lfw": r, "cfp_fp": r}, path, title="ROC")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
