"""The face experiment on generated identities: margins in the loss, IR-ResNet, the class-sharded
classifier, the identity folder and verification sets, training with verification, Table 5 and
the command line (CPU)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _experiments_util import FACE_IDS
from _experiments_util import FACE_SIZE
from _experiments_util import REPO
from _experiments_util import jpeg_bytes
from _experiments_util import load_config
from _experiments_util import make_faces
from _experiments_util import run_module
from _experiments_util import run_python

import gsc_jax
from experiments.common import config as cfg
from experiments.common import grid
from experiments.common import loop
from experiments.common import losses
from experiments.common.data import stream
from experiments.face import data
from experiments.face import models
from experiments.face import task

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_IDS = FACE_IDS
TABLE5 = os.path.join(REPO, "experiments", "face", "configs", "table5.py")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return make_faces(str(tmp_path_factory.mktemp("faces")))


def tiny_config(data_dir, sets=(), **overrides):
    """The ArcFace recipe at CPU size: IR-ResNet-18 of width 8 with one block a stage, 32x32
    faces, every 4th image of an identity held out, 4 verification folds."""
    base = dict(
        data__data_dir=data_dir,
        model__name="iresnet18",
        model__width=8,
        model__depths=(1, 1, 1, 1),
        model__embedding_size=16,
        data__image_size=FACE_SIZE,
        epochs=4,
        batch_size=16,
        eval_batch_size=8,
        optimizer__learning_rate=0.02,
        data__holdout_every=4,
        evals__verification__num_folds=4,
        evals__verification__sets=tuple(sets),
    )
    return load_config("face", "arcface", **{**base, **overrides})


def _spec(margin, gamma=0.0, top_c=2) -> losses.LossSpec:
    scale, m = losses.MARGIN_DEFAULTS[margin]
    return losses.LossSpec(
        "ce", gsc_gamma=gamma, gsc_top_c=top_c, margin=margin, margin_scale=scale, margin_m=m
    )


# --- the margin in the shared loss layer ---------------------------------------------------------


@pytest.mark.parametrize("margin", ["arcface", "cosface"])
def test_margin_loss_is_the_margin_logits_fed_to_ce_and_gsc(margin):
    cosines = jax.random.uniform(jax.random.key(0), (5, 7), minval=-1.0, maxval=1.0)
    labels = jnp.array([0, 3, 6, 2, 2])
    spec = _spec(margin, gamma=0.05, top_c=3)
    margin_fn = gsc_jax.arcface_logits if margin == "arcface" else gsc_jax.cosface_logits
    expected_logits = margin_fn(
        cosines, labels, scale=64.0, margin=0.5 if margin == "arcface" else 0.4
    )
    got = losses.make_loss_fn(spec)(64.0 * cosines, labels)
    want = gsc_jax.gsc_loss(expected_logits, labels, gamma=0.05, top_c=3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    _, parts = losses.make_objective(spec)(64.0 * cosines, labels)
    np.testing.assert_allclose(
        parts["base_loss"], np.mean(gsc_jax.cross_entropy(expected_logits, labels)), rtol=1e-5
    )
    np.testing.assert_allclose(
        parts["gsc_term"], np.mean(gsc_jax.gsc_term(expected_logits, top_c=3)), rtol=1e-5
    )
    # The margin makes the loss larger than plain CE of the same scaled cosines (equal only
    # where both round to 0).
    plain = np.asarray(losses.make_loss_fn(losses.LossSpec("ce"))(64.0 * cosines, labels))
    with_margin = np.asarray(losses.make_loss_fn(_spec(margin))(64.0 * cosines, labels))
    assert np.all((with_margin > plain) | (plain == 0)) and np.sum(with_margin > plain) >= 3


def test_margin_spec_label_identity_and_errors():
    config, table = cfg.load(TABLE5)
    (row,) = [r for r in table.rows if r.id == "cosface_gsc_0.025_3"]
    spec = losses.LossSpec.from_config(cfg.apply_overrides(config, row.overrides).loss)
    assert spec == _spec("cosface", gamma=0.025, top_c=3)
    assert spec.label == "CosFace(64,0.4)+GSC(0.025,3)"
    assert spec.hyperparameters() == {
        "name": "ce",
        "gsc_gamma": 0.025,
        "gsc_top_c": 3,
        "margin": "cosface",
        "margin_scale": 64.0,
        "margin_m": 0.4,
    }
    assert losses.LossSpec().hyperparameters() == {"name": "ce"}
    with pytest.raises(ValueError, match="unknown margin"):
        losses.validate(losses.LossSpec(margin="sphereface"), 10)
    with pytest.raises(ValueError, match="need scale > 0"):
        losses.validate(losses.LossSpec(margin="arcface", margin_scale=0.0), 10)
    with pytest.raises(ValueError, match="'ols'"):
        losses.validate(losses.LossSpec("ols", margin="arcface"), 10)


# --- models ----------------------------------------------------------------------------------------


def _insightface_iresnet_parameters(depths, width=64, embedding=512, image=112):
    """Trainable parameters of insightface's iresnet (recognition/arcface_torch/backbones/
    iresnet.py) counted from its layer list: BN = 2C (the final BN1d only its bias), PReLU = C."""
    count = 9 * 3 * width + 2 * width + width  # stem conv, BN, PReLU
    inplanes = width
    for stage, depth in enumerate(depths):
        planes = width * 2**stage
        for i in range(depth):
            count += (
                2 * inplanes + 9 * inplanes * planes + 2 * planes + planes
            )  # bn1 conv1 bn2 prelu
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
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3)), train=False)
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert count == _insightface_iresnet_parameters(models.CONFIGS[name])
    # iresnet50: 43.6M, the figure usually quoted for arcface_torch's r50 (with the 512 fixed
    # BN scales that PyTorch counts as parameters).
    if name == "iresnet50":
        assert round((count + 512) / 1e6, 1) == 43.6


def test_cosine_head_logits_are_scaled_cosines_and_embeddings_unit_norm():
    model = models.create_model(
        "iresnet18", 5, width=4, depths=(1, 1, 1, 1), embedding_size=8, scale=30.0
    )
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


# --- the identity folder and the verification sets -------------------------------------------------


def test_identity_catalogue_holds_out_every_nth_image(faces):
    folder, _ = faces
    catalogue = data.identity_catalogue(folder, holdout_every=4)
    assert catalogue.class_names == tuple(f"id{k:03d}" for k in range(NUM_IDS))
    assert (catalogue.num_train, catalogue.num_eval) == (NUM_IDS * 9, NUM_IDS * 3)
    assert not set(catalogue.train.paths) & set(catalogue.eval.paths)
    assert os.path.basename(catalogue.eval.paths[0]) == "0003.jpg"
    assert catalogue.eval.labels.tolist() == [k for k in range(NUM_IDS) for _ in range(3)]


def _face_file(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(jpeg_bytes(np.full((8, 8, 3), 100, np.uint8)))


def test_identity_folder_skips_hidden_entries_and_stray_files_and_names_empty_ones(tmp_path):
    """A notebook's .ipynb_checkpoints/ (with an image in it) would be identity 0 and shift every
    label; a stray file beside the identities, or a non-image inside one, is no image."""
    root = tmp_path / "ids"
    for name in ("alice", "bob"):
        for i in range(4):
            _face_file(str(root / name / f"{i}.jpg"))
    _face_file(str(root / ".ipynb_checkpoints" / "0.jpg"))
    _face_file(str(root / "alice" / ".hidden.jpg"))
    (root / "README.txt").write_text("faces\n")
    (root / "bob" / "Thumbs.db").write_bytes(b"\0")
    catalogue = data.identity_catalogue(str(root), holdout_every=4)
    assert catalogue.class_names == ("alice", "bob")
    assert (catalogue.num_train, catalogue.num_eval) == (6, 2)
    paths = catalogue.train.paths + catalogue.eval.paths
    assert all(os.path.basename(os.path.dirname(p)) in ("alice", "bob") for p in paths)
    assert not any(os.path.basename(p).startswith(".") or p.endswith(".db") for p in paths)
    assert catalogue.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    os.makedirs(root / "carol")  # an identity folder without images is named, not skipped
    with pytest.raises(stream.MissingDataError, match=r"without images.*\['carol'\]"):
        data.identity_catalogue(str(root), holdout_every=4)


def test_identity_catalogue_and_sets_errors(tmp_path):
    with pytest.raises(ValueError, match="holdout_every"):
        data.identity_catalogue(str(tmp_path), holdout_every=1)
    with pytest.raises(stream.MissingDataError, match="not a directory"):
        data.identity_catalogue(str(tmp_path / "nowhere"))
    _face_file(str(tmp_path / "a" / "0.jpg"))
    with pytest.raises(stream.MissingDataError, match="at least two identity folders"):
        data.identity_catalogue(str(tmp_path))
    _face_file(str(tmp_path / "b" / "0.jpg"))
    with pytest.raises(stream.MissingDataError, match="nothing is held out"):
        data.identity_catalogue(str(tmp_path), holdout_every=4)
    with pytest.raises(stream.MissingDataError, match="neither a .bin"):
        data.find_verification_sets([str(tmp_path)])


def test_find_verification_sets_reads_val_dir(faces, tmp_path):
    _, bin_path = faces
    os.symlink(bin_path, tmp_path / "lfw.bin")
    os.symlink(bin_path, tmp_path / "agedb_30.bin")
    found = data.find_verification_sets([bin_path], str(tmp_path))
    assert found == {
        "val": bin_path,
        "lfw": str(tmp_path / "lfw.bin"),
        "agedb_30": str(tmp_path / "agedb_30.bin"),
    }


def test_two_verification_sets_with_one_name_are_refused_naming_both(faces, tmp_path):
    """Each set's metrics are 'verification/<stem>/...': a/lfw.bin and b/lfw.bin would log into
    one name, so the second must not silently replace the first."""
    folder, bin_path = faces
    for sub in ("a", "b"):
        os.makedirs(tmp_path / sub)
        os.symlink(bin_path, tmp_path / sub / "lfw.bin")
    first, second = str(tmp_path / "a" / "lfw.bin"), str(tmp_path / "b" / "lfw.bin")
    with pytest.raises(
        stream.MissingDataError, match="two verification sets are named 'lfw'"
    ) as error:
        data.find_verification_sets([first, second])
    assert first in str(error.value) and second in str(error.value)
    lfw_folder = os.path.join(os.path.dirname(bin_path), "lfw")  # a pairs.txt folder named lfw
    with pytest.raises(stream.MissingDataError, match="named 'lfw'"):
        data.find_verification_sets([lfw_folder, first])
    workdir = tmp_path / "run"  # refused by the run before any work
    with pytest.raises(stream.MissingDataError) as error:
        loop.train_and_evaluate(tiny_config(folder, sets=(first, second)), str(workdir))
    assert first in str(error.value) and second in str(error.value)
    assert not workdir.exists()


def test_lfw_pairs_folder_and_bin_hold_the_same_set(faces):
    _, bin_path = faces
    lfw = os.path.join(os.path.dirname(bin_path), "lfw")
    found = data.find_verification_sets([lfw, bin_path])
    assert found == {"lfw": lfw, "val": bin_path}
    from_bin = data.load_verification_set("val", bin_path, FACE_SIZE)
    from_pairs = data.load_verification_set("lfw", lfw, FACE_SIZE)
    np.testing.assert_array_equal(from_pairs.issame, from_bin.issame)
    np.testing.assert_array_equal(from_pairs.images, from_bin.images)


# --- training ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    """4 epochs with verification on the .bin, named test.bin like the identification split,
    and on the same pairs in LFW's layout."""
    folder, bin_path = faces
    root = tmp_path_factory.mktemp("trained")
    os.symlink(bin_path, root / "test.bin")
    lfw = os.path.join(os.path.dirname(bin_path), "lfw")
    workdir = root / "run"
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        result = loop.train_and_evaluate(
            tiny_config(folder, sets=(str(root / "test.bin"), lfw)), str(workdir)
        )
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    return result, workdir


@pytest.mark.slow
def test_training_lifts_verification_above_chance(trained):
    result, workdir = trained
    assert result.status == "completed"
    records = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(
        "verification/test/accuracy" in r and "verification/lfw/tar_at_far" in r for r in records
    )
    summary = json.load(open(workdir / "summary.json"))
    # Chance is 0.5 (balanced pairs) and 1 / NUM_IDS (identification).
    assert summary["verification/test/accuracy"] > 0.85, summary["verification/test/accuracy"]
    assert summary["test/top1"] > 2.5 / NUM_IDS, summary["test/top1"]
    assert summary["head_sharded"] is False
    assert summary["num_train_examples"] == NUM_IDS * 9
    # The same pairs, two formats.
    assert summary["verification/lfw/accuracy"] == summary["verification/test/accuracy"]
    saved = json.load(open(workdir / "verification.json"))
    assert {"test", "lfw"} <= set(saved)
    assert summary["verification/pairs"] == {"test": NUM_IDS * 8, "lfw": NUM_IDS * 8}
    assert os.path.getsize(workdir / "roc.png") > 0


@pytest.mark.slow
def test_a_verification_set_named_like_a_split_keeps_the_identification_metrics(trained):
    """test.bin yields 'verification/test/...'; the held-out identification evaluator 'test'
    keeps 'test/top1', 'test/count', ... in metrics.jsonl and summary.json."""
    result, workdir = trained
    summary = json.load(open(workdir / "summary.json"))
    records = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    assert summary["test/count"] == NUM_IDS * 3  # the held-out images, not the 48 pairs
    for key in ("test/top1", "test/nll", "test/ece", "test/count"):
        assert summary[key] == records[-1][key] == result.summary[key]
    assert not any(k.startswith("test/") and ("accuracy" in k or "tar" in k) for k in summary)
    assert {
        "verification/test/accuracy",
        "verification/test/accuracy_std",
        "verification/test/tar_at_far",
    } <= set(summary)
    assert summary["test/top1"] != summary["verification/test/accuracy"]
    assert sum(summary["test/reliability"]["count"]) == NUM_IDS * 3  # its details too


SHARDED = r"""
import json, os
import jax, numpy as np
jax.config.update("jax_disable_most_optimizations", True)
from _experiments_util import load_config
from experiments.common import loop
base = dict(data__data_dir=os.environ["DATA"], model__name="iresnet18", model__width=4,
            model__depths=(1, 1, 1, 1), model__embedding_size=16, data__image_size=32, epochs=1,
            batch_size=16, eval_batch_size=8, optimizer__learning_rate=0.1,
            data__holdout_every=4, loss__margin__name="cosface", loss__margin__m=0.4,
            loss__gsc__gamma=0.05, loss__gsc__top_c=2)
out = {}
for name, shard, stop in (("replicated", "no", 0), ("sharded", "yes", 2), ("sharded", "yes", 0)):
    config = load_config("face", "arcface", **base, model__shard_head=shard,
                         run__stop_after_steps=stop)
    with config.unlocked():
        del config.evals["verification"]  # the head's layout is all this compares
    result = loop.train_and_evaluate(config, os.path.join(os.environ["WORKDIR"], name))
    kernel = result.state.params["head"]["kernel"]
    momentum = result.state.opt_state[1][0].trace["head"]["kernel"]
    out[name] = {
        "status": result.status, "step": int(result.state.step), "shape": list(kernel.shape),
        "spec": str(kernel.sharding.spec), "momentum_spec": str(momentum.sharding.spec),
        "shard_shape": list(kernel.addressable_shards[0].data.shape),
        "kernel": np.asarray(jax.device_get(kernel)).tolist(),
        "test_nll": result.summary.get("test/nll"), "test_top1": result.summary.get("test/top1"),
        "head_sharded": result.summary.get("head_sharded")}
print("RESULT", json.dumps({"devices": jax.device_count(), **out}))
"""


@pytest.mark.slow
def test_class_sharded_head_equals_replicated_head_and_resumes(faces, tmp_path):
    """On 8 devices the classifier [D, K] with K = 6 identities is padded to 8 columns and split
    one column per device (its momentum too); a sharded run stopped after 2 steps and resumed
    (the checkpoint restored into the split layout) trains to the replicated head's weights."""
    folder, _ = faces
    proc = run_python(
        SHARDED,
        {
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "DATA": folder,
            "WORKDIR": str(tmp_path),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[7:])
    sharded, replicated = result["sharded"], result["replicated"]
    assert result["devices"] == 8 and sharded["status"] == replicated["status"] == "completed"
    assert sharded["step"] == replicated["step"] == 3  # 54 images, batch 16: 2 + 1 resumed
    assert sharded["head_sharded"] is True and replicated["head_sharded"] is False
    assert sharded["shape"] == [16, 8] and sharded["shard_shape"] == [16, 1]
    assert sharded["spec"] == sharded["momentum_spec"] == "P(None, 'data')"
    assert replicated["shape"] == [16, NUM_IDS] and replicated["spec"] == "P()"
    w_sharded, w_replicated = np.array(sharded["kernel"]), np.array(replicated["kernel"])
    np.testing.assert_allclose(w_sharded[:, :NUM_IDS], w_replicated, rtol=2e-4, atol=2e-6)
    assert np.all(w_sharded[:, NUM_IDS:] == 0)  # the padding columns never get a gradient
    np.testing.assert_allclose(sharded["test_nll"], replicated["test_nll"], rtol=1e-4)
    assert sharded["test_top1"] == replicated["test_top1"]


# --- Table 5 and the command line ----------------------------------------------------------------------


def test_table5_rows_and_not_run(tmp_path):
    config, table = cfg.load(TABLE5)
    assert len(table.rows) == 14 and len({r.id for r in table.rows}) == 14
    specs = [
        losses.LossSpec.from_config(cfg.apply_overrides(config, r.overrides).loss)
        for r in table.rows
    ]
    assert all(spec.margin in ("arcface", "cosface") for spec in specs)
    assert sum(spec.uses_gsc for spec in specs) == 12
    results = [
        grid.CellResult(r, s.label, grid.row_workdirs(table, r, str(tmp_path)), [None])
        for r, s in zip(table.rows, specs)
    ]
    text = grid.write(table, results, str(tmp_path))
    assert text == open(tmp_path / "table5.md").read()
    assert text.count("not run") == 14 * 6
    assert "| arcface_gsc_0.03_5 | ArcFace(64,0.5)+GSC(0.03,5) | not run | 99.25 |" in text
    with pytest.raises(ValueError, match="unknown rows"):
        grid.check_rows(table, ["arcface_gsc_9_9"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model__name": "resnet50"}, "config.model.name"),
        ({"data__image_size": 40}, "config.data.image_size"),
        ({"loss__margin__name": "none"}, "config.loss.margin.name"),
        ({"epochs": 0}, "config.epochs"),
        ({"evals__verification__num_folds": 1}, "num_folds must be at least 2"),
        ({"model__depths": (1, 1)}, "config.model.depths"),
        ({"model__shard_head": "maybe"}, "config.model.shard_head"),
        (
            {"loss__gsc__gamma": 0.1, "loss__gsc__top_c": 7},
            r"top_c must be in \[1, num_classes=6\]",
        ),
        ({"data__data_dir": ""}, "config.data.data_dir is required"),
    ],
)
def test_bad_config_names_the_field_before_training(faces, tmp_path, overrides, message):
    folder, bin_path = faces
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(
            tiny_config(folder, sets=(bin_path,), **overrides), str(tmp_path / "w")
        )
    assert not (tmp_path / "w").exists()


def test_task_shards_the_head_on_several_devices_only():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    assert task.class_sharding(load_config("face", "arcface"), mesh) is None  # auto, 1 device
    assert (
        task.class_sharding(load_config("face", "arcface", model__shard_head="yes"), mesh)
        is not None
    )


@pytest.mark.slow
def test_command_line_errors_come_before_training(faces, tmp_path):
    folder, _ = faces
    bad_bin = tmp_path / "bad.bin"
    import pickle  # pylint: disable=import-outside-toplevel

    bad_bin.write_bytes(pickle.dumps({"not": "a verification set"}))
    cases = [
        ([f"--config.data.data_dir={tmp_path / 'missing'}"], "not a directory"),
        (
            [
                f"--config.data.data_dir={folder}",
                "--config.loss.gsc.gamma=0.1",
                "--config.loss.gsc.top_c=9",
            ],
            "config.loss.gsc.top_c",
        ),
        (
            [
                f"--config.data.data_dir={folder}",
                f"--config.evals.verification.sets=('{bad_bin}',)",
            ],
            "bad.bin",
        ),
        (
            [f"--config.data.data_dir={folder}", "--config.model.shard_head=maybe"],
            "config.model.shard_head",
        ),
    ]
    for args, message in cases:
        proc = run_module(
            [
                "experiments.face",
                f"--workdir={tmp_path / 'w'}",
                "--config.data.holdout_every=4",
                "--config.data.image_size=32",
                "--config.batch_size=16",
                *args,
            ]
        )
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.slow
def test_command_line_trains_table5_row_on_both_set_formats(faces, tmp_path):
    """`python -m experiments.face --config table5.py --rows arcface` with a .bin and an LFW
    pairs folder named like Table 5's sets: the ArcFace row has our accuracies on those two,
    'n/a' on the sets not given, every other row 'not run'."""
    folder, bin_path = faces
    sets = tmp_path / "sets"
    sets.mkdir()
    os.symlink(bin_path, sets / "lfw.bin")
    os.symlink(os.path.join(os.path.dirname(bin_path), "lfw"), sets / "agedb_30")
    proc = run_module(
        [
            "experiments.face",
            "--config",
            TABLE5,
            f"--workdir={tmp_path / 'w'}",
            f"--config.data.data_dir={folder}",
            f"--config.evals.verification.sets=('{sets / 'lfw.bin'}', '{sets / 'agedb_30'}')",
            "--rows=arcface",
            "--config.model.name=iresnet18",
            "--config.model.width=8",
            "--config.model.depths=(1,1,1,1)",
            "--config.model.embedding_size=16",
            "--config.data.image_size=32",
            "--config.epochs=1",
            "--config.batch_size=16",
            "--config.eval_batch_size=8",
            "--config.data.holdout_every=4",
            "--config.evals.verification.num_folds=4",
            "--config.run.progress=False",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = open(tmp_path / "w" / "table5.md").read()
    row = [line for line in table.splitlines() if line.startswith("| arcface | ArcFace(64,0.5) |")]
    cells = [c.strip() for c in row[0].split("|")[3:-1]]  # (ours, paper) per set, Table 5's order
    ours = dict(zip(data.TABLE5_SETS, cells[::2]))
    assert ours["lfw"] not in ("not run", "n/a") and ours["agedb_30"] not in ("not run", "n/a")
    assert all(ours[n] == "n/a" for n in ("calfw", "cfp_ff", "cplfw", "cfp_fp"))
    assert table.count("not run") == 13 * 6
    summary = json.load(open(tmp_path / "w" / "table5" / "arcface" / "summary.json"))
    assert summary["verification/lfw/accuracy"] == summary["verification/agedb_30/accuracy"]
