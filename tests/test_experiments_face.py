"""The face experiment on generated identities: margins in the loss, IR-ResNet, the class-sharded
classifier, training with verification, Table 5 and the command line (CPU)."""

import io
import json
import os

import gsc_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from _experiments_util import run_module, run_python
from experiments.common import losses
from experiments.face import data, models, tables, train, verification

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.usefixtures("fast_compile")

SIZE = 32
NUM_IDS = 6


def _identity_images(rng, templates, k, n):
    """n noisy views of identity k: its template, shifted by up to 2 px, plus noise."""
    out = []
    for _ in range(n):
        dy, dx = rng.randint(-2, 3, 2)
        image = np.roll(templates[k], (dy, dx), axis=(0, 1)).astype(np.int16)
        image += rng.randint(-30, 31, image.shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


def _jpeg(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_faces(root, num_ids=NUM_IDS, per_id=12, pairs_per_id=8, seed=0):
    """An identity folder ROOT/train/<id>/*.jpg and a verification .bin ROOT/val.bin of other
    images of the same identities (balanced same / different pairs). Each identity is a random
    smooth colour template."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, (num_ids, 4, 4, 3)).astype(np.uint8)
    templates = [np.asarray(Image.fromarray(c).resize((SIZE, SIZE), Image.BILINEAR))
                 for c in coarse]
    for k in range(num_ids):
        folder = os.path.join(root, "train", f"id{k:03d}")
        os.makedirs(folder)
        for i, pixels in enumerate(_identity_images(rng, templates, k, per_id)):
            with open(os.path.join(folder, f"{i:04d}.jpg"), "wb") as f:
                f.write(_jpeg(pixels))
    held = [(_jpeg(p), k) for k in range(num_ids)
            for p in _identity_images(rng, templates, k, pairs_per_id)]
    index, issame = verification.sample_pairs(np.array([k for _, k in held]),
                                              num_ids * pairs_per_id, seed=seed)
    encoded = [held[i][0] for pair in index for i in pair]
    verification.write_bin(os.path.join(root, "val.bin"), encoded, issame)
    # The same pairs in LFW's layout: lfw/<name>/<name>_0001.jpg and lfw/pairs.txt.
    names = [f"person{k}" for k in range(num_ids)]
    number = {}  # held-out image -> its 1-based number within its identity
    for i, (jpeg, k) in enumerate(held):
        number[i] = sum(1 for j in range(i) if held[j][1] == k) + 1
        os.makedirs(os.path.join(root, "lfw", names[k]), exist_ok=True)
        with open(os.path.join(root, "lfw", names[k], f"{names[k]}_{number[i]:04d}.jpg"),
                  "wb") as f:
            f.write(jpeg)
    lines = [f"{names[held[a][1]]} {number[a]} {number[b]}" if same else
             f"{names[held[a][1]]} {number[a]} {names[held[b][1]]} {number[b]}"
             for (a, b), same in zip(index, issame)]
    with open(os.path.join(root, "lfw", "pairs.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(root, "train"), os.path.join(root, "val.bin")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return make_faces(str(tmp_path_factory.mktemp("faces")))


def tiny_config(data_dir, **changes) -> train.RunConfig:
    base = dict(data_dir=data_dir, model="iresnet18", width=8, depths=(1, 1, 1, 1),
                embedding_size=16, image_size=SIZE, epochs=4, batch_size=16, eval_batch_size=8,
                learning_rate=0.02, holdout_every=4, num_folds=4, progress=False,
                loss=tables._spec("arcface"))
    base.update(changes)
    return train.RunConfig(**base)


# --- the margin in the shared loss layer ---------------------------------------------------------

@pytest.mark.parametrize("margin", ["arcface", "cosface"])
def test_margin_loss_is_the_margin_logits_fed_to_ce_and_gsc(margin):
    cosines = jax.random.uniform(jax.random.key(0), (5, 7), minval=-1.0, maxval=1.0)
    labels = jnp.array([0, 3, 6, 2, 2])
    spec = tables._spec(margin, gamma=0.05, top_c=3)
    margin_fn = gsc_jax.arcface_logits if margin == "arcface" else gsc_jax.cosface_logits
    expected_logits = margin_fn(cosines, labels, scale=64.0,
                                margin=0.5 if margin == "arcface" else 0.4)
    got = losses.make_loss_fn(spec)(64.0 * cosines, labels)
    want = gsc_jax.gsc_loss(expected_logits, labels, gamma=0.05, top_c=3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    parts = losses.make_loss_parts_fn(spec)(64.0 * cosines, labels)
    np.testing.assert_allclose(parts["base_loss"],
                               gsc_jax.cross_entropy(expected_logits, labels), rtol=1e-5)
    np.testing.assert_allclose(parts["gsc_term"],
                               gsc_jax.gsc_term(expected_logits, top_c=3), rtol=1e-5)
    # The margin makes the loss larger than plain CE of the same scaled cosines (equal only
    # where both round to 0).
    plain = np.asarray(losses.make_loss_fn(losses.LossSpec("ce"))(64.0 * cosines, labels))
    with_margin = np.asarray(losses.make_loss_fn(tables._spec(margin))(64.0 * cosines, labels))
    assert np.all((with_margin > plain) | (plain == 0)) and np.sum(with_margin > plain) >= 3


def test_margin_spec_label_identity_and_errors():
    spec = tables._spec("cosface", gamma=0.025, top_c=3)
    assert spec.label == "CosFace(64,0.4)+GSC(0.025,3)"
    assert spec.hyperparameters() == {"name": "ce", "gsc_gamma": 0.025, "gsc_top_c": 3,
                                      "margin": "cosface", "margin_scale": 64.0, "margin_m": 0.4}
    assert losses.LossSpec().hyperparameters() == {"name": "ce"}
    with pytest.raises(ValueError, match="unknown margin"):
        losses.validate_loss_spec(losses.LossSpec(margin="sphereface"), 10)
    with pytest.raises(ValueError, match="margin_scale > 0"):
        losses.validate_loss_spec(losses.LossSpec(margin="arcface", margin_scale=0.0), 10)
    with pytest.raises(ValueError, match="'ols'"):
        losses.validate_loss_spec(losses.LossSpec("ols", margin="arcface"), 10)


# --- models ----------------------------------------------------------------------------------------

def _insightface_iresnet_parameters(depths, width=64, embedding=512, image=112):
    """Trainable parameters of insightface's iresnet (recognition/arcface_torch/backbones/
    iresnet.py) counted from its layer list: BN = 2C (the final BN1d only its bias), PReLU = C."""
    count = 9 * 3 * width + 2 * width + width  # stem conv, BN, PReLU
    inplanes = width
    for stage, depth in enumerate(depths):
        planes = width * 2**stage
        for i in range(depth):
            count += 2 * inplanes + 9 * inplanes * planes + 2 * planes + planes  # bn1 conv1 bn2 prelu
            count += 9 * planes * planes + 2 * planes  # conv2 bn3
            if i == 0:
                count += inplanes * planes + 2 * planes  # 1x1 shortcut + BN
            inplanes = planes
    spatial = (image // 16) ** 2
    count += 2 * inplanes + inplanes * spatial * embedding + embedding + embedding
    return count


@pytest.mark.parametrize("name", ["iresnet50", "iresnet100"])
def test_iresnet_parameter_count_matches_insightface(name):
    model = models.IResNet(models.CONFIGS[name])
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, 112, 112, 3)), train=False))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert count == _insightface_iresnet_parameters(models.CONFIGS[name])
    # iresnet50: 43.6M, the figure usually quoted for arcface_torch's r50 (with the 512 fixed
    # BN scales that PyTorch counts as parameters).
    if name == "iresnet50":
        assert round((count + 512) / 1e6, 1) == 43.6


def test_cosine_head_logits_are_scaled_cosines_and_embeddings_unit_norm():
    model = models.create_model("iresnet18", 5, width=4, depths=(1, 1, 1, 1), embedding_size=8,
                                scale=30.0)
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    logits = model.apply(variables, x, train=False)
    emb = model.apply(variables, x, method=models.FaceModel.embed)
    w = variables["params"]["head"]["kernel"]
    want = 30.0 * emb @ (w / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    zero = models.l2_normalize(jnp.zeros((2, 4)))
    grad = jax.grad(lambda v: models.l2_normalize(v).sum())(jnp.zeros(4))
    assert np.all(zero == 0) and np.all(np.isfinite(grad))


# --- data and verification sets --------------------------------------------------------------------

def test_identity_source_holds_out_every_nth_image(faces):
    folder, _ = faces
    source = data.identity_source(folder, holdout_every=4)
    assert source.class_names == tuple(f"id{k:03d}" for k in range(NUM_IDS))
    assert (source.num_train, source.num_eval) == (NUM_IDS * 9, NUM_IDS * 3)
    assert not set(source.train.paths) & set(source.eval.paths)
    assert os.path.basename(source.eval.paths[0]) == "0003.jpg"


def test_identity_source_and_sets_errors(tmp_path):
    with pytest.raises(ValueError, match="holdout_every"):
        data.identity_source(str(tmp_path), holdout_every=1)
    with pytest.raises(data.pipeline.MissingDataError, match="not a directory"):
        data.identity_source(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "a")
    with pytest.raises(data.pipeline.MissingDataError, match="two identity folders"):
        data.identity_source(str(tmp_path))
    with pytest.raises(data.pipeline.MissingDataError, match="neither a .bin"):
        data.find_verification_sets([str(tmp_path)])


def test_find_verification_sets_reads_val_dir(faces, tmp_path):
    _, bin_path = faces
    os.symlink(bin_path, tmp_path / "lfw.bin")
    os.symlink(bin_path, tmp_path / "agedb_30.bin")
    found = data.find_verification_sets([bin_path], str(tmp_path))
    assert found == {"val": bin_path, "lfw": str(tmp_path / "lfw.bin"),
                     "agedb_30": str(tmp_path / "agedb_30.bin")}


# --- training ----------------------------------------------------------------------------------------

def test_lfw_pairs_folder_and_bin_hold_the_same_set(faces):
    _, bin_path = faces
    lfw = os.path.join(os.path.dirname(bin_path), "lfw")
    found = data.find_verification_sets([lfw, bin_path])
    assert found == {"lfw": lfw, "val": bin_path}
    from_bin = data.load_verification_set("val", bin_path, SIZE)
    from_pairs = data.load_verification_set("lfw", lfw, SIZE)
    np.testing.assert_array_equal(from_pairs.issame, from_bin.issame)
    np.testing.assert_array_equal(from_pairs.images, from_bin.images)


def test_training_lifts_verification_above_chance(faces, tmp_path):
    folder, bin_path = faces
    lfw = os.path.join(os.path.dirname(bin_path), "lfw")
    sets = [data.load_verification_set("val", bin_path, SIZE),
            data.load_verification_set("lfw", lfw, SIZE)]
    result = train.run(tiny_config(folder), str(tmp_path / "run"), sets=sets)
    assert result.status == "completed"
    records = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all("val_accuracy" in r and "val_tar_at_far" in r for r in records)
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    # Chance is 0.5 (balanced pairs) and 1 / NUM_IDS (identification).
    assert summary["val_accuracy"] > 0.85, summary["val_accuracy"]
    assert summary["test_accuracy"] > 2.5 / NUM_IDS, summary["test_accuracy"]
    assert summary["head_sharded"] is False and summary["num_identities"] == NUM_IDS
    assert summary["lfw_accuracy"] == summary["val_accuracy"]  # the same pairs, two formats
    saved = json.load(open(tmp_path / "run" / "verification.json"))
    assert saved["val"]["num_pairs"] == len(sets[0].issame)
    assert os.path.getsize(tmp_path / "run" / "roc.png") > 0


SHARDED = r"""
import dataclasses, json, os
import jax, numpy as np
from experiments.face import data, tables, train
config = train.RunConfig(
    data_dir=os.environ["DATA"], model="iresnet18", width=8, depths=(1, 1, 1, 1),
    embedding_size=16, image_size=32, epochs=1, batch_size=16, eval_batch_size=8,
    learning_rate=0.1, holdout_every=4, num_folds=4, progress=False,
    loss=tables._spec("cosface", gamma=0.05, top_c=2))
sets = [data.load_verification_set("val", os.environ["BIN"], 32)]
out = {}
for name, shard, stop in (("replicated", False, 0), ("sharded", True, 2), ("sharded", True, 0)):
    run = dataclasses.replace(config, shard_head=shard, stop_after_steps=stop)
    result = train.run(run, os.path.join(os.environ["WORKDIR"], name), sets=sets)
    kernel = result.state.params["head"]["kernel"]
    momentum = result.state.opt_state[1][0].trace["head"]["kernel"]
    out[name] = {
        "status": result.status, "step": int(result.state.step), "shape": list(kernel.shape),
        "spec": str(kernel.sharding.spec), "momentum_spec": str(momentum.sharding.spec),
        "shard_shape": list(kernel.addressable_shards[0].data.shape),
        "kernel": np.asarray(jax.device_get(kernel)).tolist(),
        "val": result.summary.get("val_accuracy"), "test_nll": result.summary["test_nll"]}
print("RESULT", json.dumps({"devices": jax.device_count(), **out}))
"""


def test_class_sharded_head_equals_replicated_head_and_resumes(faces, tmp_path):
    """On 8 devices the classifier [D, K] with K = 6 identities is padded to 8 columns and split
    one column per device (its momentum too); a sharded run stopped after 2 steps and resumed
    (the checkpoint restored into the split layout) trains to the replicated head's weights."""
    folder, bin_path = faces
    proc = run_python(SHARDED, {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2", "DATA": folder, "BIN": bin_path,
        "WORKDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[7:])
    sharded, replicated = result["sharded"], result["replicated"]
    assert result["devices"] == 8 and sharded["status"] == replicated["status"] == "completed"
    assert sharded["step"] == replicated["step"] > 2
    assert sharded["shape"] == [16, 8] and sharded["shard_shape"] == [16, 1]
    assert sharded["spec"] == sharded["momentum_spec"] == "P(None, 'data')"
    assert replicated["shape"] == [16, NUM_IDS] and replicated["spec"] == "P()"
    w_sharded, w_replicated = np.array(sharded["kernel"]), np.array(replicated["kernel"])
    np.testing.assert_allclose(w_sharded[:, :NUM_IDS], w_replicated, rtol=2e-4, atol=2e-6)
    assert np.all(w_sharded[:, NUM_IDS:] == 0)  # the padding columns never get a gradient
    np.testing.assert_allclose(sharded["test_nll"], replicated["test_nll"], rtol=1e-4)
    np.testing.assert_allclose(sharded["val"], replicated["val"], atol=1e-9)


# --- Table 5 and the command line ----------------------------------------------------------------------

def test_table5_rows_and_not_run(tmp_path):
    assert len(tables.TABLE5) == 14 and len(set(tables.row_ids())) == 14
    gsc_rows = [spec for _, spec, _ in tables.TABLE5 if spec.uses_gsc]
    assert all(spec.margin in ("arcface", "cosface") for spec in gsc_rows)
    path = tables.write_table(str(tmp_path))
    text = open(path).read()
    assert text.count("not run") == 14 * 6
    assert "| ArcFace(64,0.5)+GSC(0.03,5) | not run | 99.250" in text
    with pytest.raises(ValueError, match="unknown --rows"):
        tables.check_rows(5, ["arcface_gsc_9_9"])
    with pytest.raises(ValueError, match="needs --table 5"):
        tables.check_rows(0, ["arcface"])


def test_validate_names_the_flag(faces):
    folder, _ = faces
    for changes, flag in [({"model": "resnet50"}, "--model"), ({"image_size": 40}, "--image_size"),
                          ({"loss": losses.LossSpec()}, "--margin"),
                          ({"epochs": 0}, "--epochs"), ({"num_folds": 1}, "--num_folds"),
                          ({"depths": (1, 1)}, "depths")]:
        with pytest.raises(ValueError, match=flag):
            train.validate(tiny_config(folder, **changes))
    with pytest.raises(ValueError, match="gsc_top_c"):
        train.validate(tiny_config(folder, loss=tables._spec("arcface", 0.1, 7)), NUM_IDS)


def test_command_line_errors_come_before_training(faces, tmp_path):
    folder, _ = faces
    bad_bin = tmp_path / "bad.bin"
    import pickle
    bad_bin.write_bytes(pickle.dumps({"not": "a verification set"}))
    cases = [
        (["--data_dir", str(tmp_path / "missing")], "not a directory"),
        (["--data_dir", folder, "--gsc_gamma", "0.1", "--gsc_top_c", "9"], "gsc_top_c"),
        (["--data_dir", folder, "--val_sets", str(bad_bin)], "bad.bin"),
        (["--data_dir", folder, "--depths", "1,x,1,1"], "--depths"),
        (["--data_dir", folder, "--table", "3"], "--table must be 5"),
    ]
    for args, message in cases:
        proc = run_module(["experiments.face", "--workdir", str(tmp_path / "w"),
                           "--holdout_every", "4", *args])
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_command_line_trains_table5_row_on_both_set_formats(faces, tmp_path):
    """`python -m experiments.face --table 5 --rows arcface` with a .bin and an LFW pairs folder
    named like Table 5's sets: the ArcFace row has our accuracies, every other cell 'not run'."""
    folder, bin_path = faces
    sets = tmp_path / "sets"
    sets.mkdir()
    os.symlink(bin_path, sets / "lfw.bin")
    os.symlink(os.path.join(os.path.dirname(bin_path), "lfw"), sets / "agedb_30")
    proc = run_module([
        "experiments.face", "--workdir", str(tmp_path / "w"), "--data_dir", folder,
        "--val_sets", f"{sets / 'lfw.bin'},{sets / 'agedb_30'}", "--table", "5",
        "--rows", "arcface", "--model", "iresnet18", "--width", "8", "--depths", "1,1,1,1",
        "--embedding_size", "16", "--image_size", "32", "--epochs", "1", "--batch_size", "16",
        "--eval_batch_size", "8", "--holdout_every", "4", "--num_folds", "4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = open(tmp_path / "w" / "table5.md").read()
    row = [line for line in table.splitlines() if line.startswith("| ArcFace(64,0.5) |")][0]
    cells = [c.strip() for c in row.split("|")[2:-1]]  # (ours, paper) per set, Table 5's order
    ours = dict(zip(data.TABLE5_SETS, cells[::2]))
    assert ours["lfw"] != "not run" and ours["agedb_30"] != "not run"
    assert all(ours[n] == "not run" for n in ("calfw", "cfp_ff", "cplfw", "cfp_fp"))
    assert table.count("not run") == 13 * 6 + 4
    summary = json.load(open(tmp_path / "w" / "table5" / "arcface" / "summary.json"))
    assert summary["lfw_accuracy"] == summary["agedb_30_accuracy"]
