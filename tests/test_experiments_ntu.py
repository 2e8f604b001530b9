"""The NTU RGB+D experiment (GSC paper Table 7) on generated NTU-named videos (PyAV): names and
protocols, the prepared store, the clip source, ResNet3D, the configs and table, the loop on
8 devices and across a stop mid-epoch."""

import json
import os

import jax
import numpy as np
import pytest
from _experiments_util import REPO
from _experiments_util import load_config
from _experiments_util import run_python

from experiments.common import config as cfg
from experiments.common import grid
from experiments.common import loop
from experiments.common import optim
from experiments.common import report
from experiments.common.data import DataError
from experiments.ntu import data
from experiments.ntu import models
from experiments.ntu import names
from experiments.ntu import prepare
from experiments.ntu import synthetic

pytest.importorskip("av")
pytestmark = pytest.mark.usefixtures("fast_compile")

SHORT = 24  # the store's shorter side
FRAMES = 6  # frames of the shortest generated video (6 to 8)
TINY = dict(
    data__short_side=SHORT,
    data__clip_frames=4,
    data__crop=16,
    data__eval_clips=2,
    data__eval_crops=3,
    data__workers=2,
    model__name="resnet3d18",
    model__width=2,
    batch_size=4,
    eval_batch_size=4,
    epochs=2,
)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """36 generated videos: actions 1-3, performers 1-4 (3 tests under X-Sub), cameras 1-3."""
    root = str(tmp_path_factory.mktemp("ntu_videos"))
    synthetic.make_videos(
        root,
        actions=(1, 2, 3),
        performers=(1, 2, 3, 4),
        cameras=(1, 2, 3),
        num_frames=FRAMES,
        height=32,
        width=40,
    )
    return root


@pytest.fixture(scope="module")
def store(videos, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ntu_store"))
    out = prepare.prepare(videos, path, SHORT, workers=2, progress=False)
    assert out["done"] == 36 and not out["failed"]
    return path


def tiny_config(store_dir, **overrides):
    return load_config("ntu", "resnet3d", **{"data__store": store_dir, **TINY, **overrides})


# --- names and protocols -------------------------------------------------------------------


def test_names_parse_every_field_and_reject_others():
    n = names.parse("/x/S017C003P040R002A060_rgb.avi")
    assert (n.setup, n.camera, n.performer, n.replication, n.action) == (17, 3, 40, 2, 60)
    assert n.label == 59 and n.stem == "S017C003P040R002A060"
    assert names.parse("S001C001P001R001A001.npy").stem == "S001C001P001R001A001"
    assert names.parse("S032C001P106R002A120_rgb.avi").action == 120  # NTU-120
    for bad in (
        "S001C004P001R001A001_rgb.avi",
        "S001C001P001R001A121_rgb.avi",
        "S000C001P001R001A001_rgb.avi",
        "video.avi",
        "S01C001P001R001A001_rgb.avi",
    ):
        assert names.parse(bad) is None, bad


def test_cross_subject_and_cross_view_splits():
    all_names = [
        names.VideoName(s, c, p, 1, a)
        for s in (1, 2, 18)
        for c in (1, 2, 3)
        for p in range(1, 41)
        for a in (1, 60, 61)
    ]
    train, test = names.split(all_names, "xsub")
    assert {n.performer for n in train} == set(names.XSUB_TRAIN)
    assert {n.performer for n in test} == set(range(1, 41)) - set(names.XSUB_TRAIN)
    assert len(names.XSUB_TRAIN) == 20 and {1, 2, 4, 5, 8, 38} <= names.XSUB_TRAIN
    assert all(n.action <= 60 and n.setup <= 17 for n in train + test)  # NTU-60 only
    assert len(train) + len(test) == 2 * 3 * 40 * 2
    train, test = names.split(all_names, "xview")
    assert {n.camera for n in train} == {2, 3} and {n.camera for n in test} == {1}
    assert len(test) == 2 * 40 * 2
    train, test = names.split(all_names, "xset")
    assert {n.setup for n in train} == {2, 18} and {n.setup for n in test} == {1}
    assert len(names.XSUB120_TRAIN) == 53
    train, test = names.split(all_names, "xsub120")
    assert {n.performer for n in train} <= names.XSUB120_TRAIN
    assert len(train + test) == len(all_names)
    assert names.NUM_ACTIONS["xsub"] == 60 and names.NUM_ACTIONS["xset"] == 120
    with pytest.raises(ValueError, match="protocol"):
        names.is_train(all_names[0], "xsubject")


# --- the prepared store ----------------------------------------------------------------------


def test_prepare_decodes_resizes_and_resumes(videos, tmp_path):
    path = str(tmp_path / "store")
    first = prepare.prepare(videos, path, SHORT, workers=2, progress=False)
    assert (first["done"], first["skipped"], first["failed"]) == (36, 0, {})
    stem = "S001C002P003R001A002"
    frames = np.load(os.path.join(path, stem + ".npy"))
    assert frames.dtype == np.uint8 and frames.shape[1:] == (SHORT, 30, 3)  # 32x40 -> 24x30
    assert frames.shape[0] == FRAMES + (3 + 2) % 3
    np.testing.assert_array_equal(
        frames, prepare.decode(os.path.join(videos, stem + "_rgb.avi"), SHORT)
    )
    # An interrupted prepare: two arrays missing and a temporary file of a killed worker.
    os.remove(os.path.join(path, stem + ".npy"))
    os.remove(os.path.join(path, "S001C001P001R001A001.npy"))
    with open(os.path.join(path, ".tmp", f"{stem}.999.npy"), "wb") as f:
        f.write(b"half")
    kept = os.path.join(path, "S001C003P004R001A003.npy")
    mtime = os.stat(kept).st_mtime_ns
    again = prepare.prepare(videos, path, SHORT, workers=1, progress=False)
    assert (again["done"], again["skipped"]) == (2, 34)
    assert os.listdir(os.path.join(path, ".tmp")) == []
    assert os.stat(kept).st_mtime_ns == mtime  # not decoded again
    np.testing.assert_array_equal(np.load(os.path.join(path, stem + ".npy")), frames)
    assert json.load(open(os.path.join(path, prepare.SETTINGS))) == {
        "format": prepare.FORMAT,
        "short_side": SHORT,
    }


def test_prepare_and_training_refuse_other_settings(videos, store, tmp_path, capsys):
    with pytest.raises(prepare.SettingsMismatchError, match="--short_side 24"):
        prepare.prepare(videos, store, 32, workers=1, progress=False)
    assert prepare.main(["--videos", videos, "--store", store, "--short_side", "32"]) == 2
    assert "prepared with" in capsys.readouterr().err
    with pytest.raises(DataError, match="short_side=24"):
        data.catalogue(store, "xsub", 32, 4)
    with pytest.raises(DataError, match="experiments.ntu.prepare"):
        data.catalogue(str(tmp_path), "xsub", SHORT, 4)  # no settings: not a store


def test_bad_videos_are_named_before_training(videos, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for f in ("S001C001P001R001A001_rgb.avi", "S001C002P003R001A002_rgb.avi"):
        os.link(os.path.join(videos, f), src / f)
    (src / "S001C001P002R001A003_rgb.avi").write_bytes(b"\x00not a video" * 50)
    (src / "holiday.avi").write_bytes(b"\x00")
    synthetic.write_video(
        str(src / "S001C002P001R001A001_rgb.avi"),
        synthetic.frames(1, 2, 1, 1, num_frames=2, height=32, width=40),
    )
    lines = []
    out = prepare.prepare(
        str(src), str(tmp_path / "s"), SHORT, workers=1, progress=False, log=lines.append
    )
    corrupt = str(src / "S001C001P002R001A003_rgb.avi")
    assert list(out["failed"]) == [corrupt] and out["done"] == 3
    assert lines == [
        f"skipped {src / 'holiday.avi'}: not an NTU RGB+D name (SsssCcccPpppRrrrAaaa_rgb.avi)"
    ]
    (tmp_path / "s" / "notes.npy").write_bytes(b"x")
    logged = []
    cat = data.catalogue(str(tmp_path / "s"), "xview", SHORT, 4, log=logged.append)
    assert len(logged) == 3
    assert logged[0].startswith(f"left out {corrupt}: not decoded by the prepare")
    assert any("S001C002P001R001A001.npy: 2 frames, shorter than a clip of 4" in x for x in logged)
    assert any("notes.npy: not an NTU RGB+D name" in x for x in logged)
    assert (len(cat.train), len(cat.test)) == (1, 1)


# --- clips --------------------------------------------------------------------------------


def test_train_batches_are_a_function_of_seed_and_step(store):
    source = tiny_config(store)
    from experiments.ntu import task

    src = task.make_source(source)
    assert (len(src.catalogue.train), len(src.catalogue.test)) == (27, 9)  # X-Sub
    spe = src.steps_per_epoch(4)
    assert spe == 6
    full = list(src.host_train_batches(batch_size=4, start_step=0, num_steps=9, seed=3))
    resumed = list(src.host_train_batches(batch_size=4, start_step=5, num_steps=9, seed=3))
    assert len(full) == 9 and len(resumed) == 4
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert full[0]["image"].shape == (4, 4, 16, 16, 3) and full[0]["image"].dtype == np.uint8
    other = next(iter(src.host_train_batches(batch_size=4, start_step=0, num_steps=1, seed=4)))
    assert not np.array_equal(other["image"], full[0]["image"])
    # One epoch visits 24 distinct videos of the 27 (the last partial batch is dropped).
    seen = {tuple(b["image"][i, 0, 0, 0]) for b in full[:6] for i in range(4)}
    assert len(full[:6]) * 4 == 24 and len(seen) > 12


def test_eval_views_are_clips_times_crops(store):
    src = data.VideoSource(
        data.catalogue(store, "xview", SHORT, 4, log=lambda _: None),
        clip_frames=4,
        crop=16,
        eval_clips=3,
        eval_crops=3,
        workers=1,
    )
    batches = list(src.host_eval_batches(5))
    assert [b["image"].shape for b in batches] == [(5, 9, 4, 16, 16, 3)] * 3  # 12 videos
    video = np.load(src.catalogue.test.paths[0])
    starts = data.clip_starts(len(video), 4, 3)
    assert starts[0] == 0 and starts[-1] == len(video) - 4
    np.testing.assert_array_equal(
        batches[0]["image"][0, 5], video[starts[1] : starts[1] + 4, 4:20, 14:30]
    )
    got = np.concatenate([b["video"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(got, np.arange(12))


# --- the model, schedule, configs ----------------------------------------------------------


def test_resnet3d34_parameter_count():
    counts = {
        (k, s): models.num_params(models.create_model("resnet3d34", k, shortcut=s))
        for k in (60, 400)
        for s in "AB"
    }
    assert counts == {
        (60, "A"): 63_370_492,
        (60, "B"): 63_544_316,
        (400, "A"): 63_544_912,
        (400, "B"): 63_718_736,
    }
    for (k, s), n in counts.items():
        assert n == models.reference_num_params((3, 4, 6, 3), k, shortcut=s)
    assert models.num_params(models.create_model("resnet3d18", 60)) == 33_060_860


def test_resnet3d_shapes_and_strides():
    model = models.create_model("resnet3d18", 5, width=2)
    x = np.zeros((2, 16, 32, 32, 3), np.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert variables["params"]["stem"]["kernel"].shape == (7, 7, 7, 3, 2)
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert out.shape == (2, 5) and out.dtype == np.float32


def test_step_schedule_divides_every_20_epochs():
    config = load_config("ntu", "resnet3d", data__store="x")
    lr = optim.make_schedule(config, steps_per_epoch=10)
    got = [float(lr(s)) for s in (0, 199, 200, 399, 400, 599)]
    np.testing.assert_allclose(got, [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4], rtol=1e-5)


def test_recipe_and_table7(tmp_path):
    config = load_config("ntu", "resnet3d", data__store="x")
    from experiments.ntu.configs import resnet3d

    assert resnet3d.departures(config) == {}
    assert (config.optimizer.weight_decay, config.model.name) == (1e-5, "resnet3d34")
    config, table = cfg.load(os.path.join(REPO, "experiments", "ntu", "configs", "table7.py"))
    assert [r.id for r in table.rows] == [
        "xsub_ce",
        "xsub_gsc_0.02_3",
        "xview_ce",
        "xview_gsc_0.02_2",
    ]
    results = []
    for row in table.rows:
        run_config = cfg.apply_overrides(config, row.overrides)
        workdirs = grid.row_workdirs(table, row, str(tmp_path))
        results.append(
            grid.CellResult(
                row,
                grid._label(run_config),
                workdirs,  # pylint: disable=protected-access
                [report.read_summary(w) for w in workdirs],
            )
        )
    text = grid.write(table, results, str(tmp_path))
    for value in ("87.87", "88.56", "90.82", "91.37"):
        assert value in text
    assert "CE+GSC(0.02,3)" in text and "CE+GSC(0.02,2)" in text
    assert text.count("not run") == 4 * 4


# --- through the loop (slow) -----------------------------------------------------------------


EIGHT_DEVICES = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from _experiments_util import load_config
from experiments.common import loop, parallel
from experiments.ntu import task
assert jax.device_count() == 8
config = load_config("ntu", "resnet3d", data__store=STORE, data__protocol="xsub",
                     **{**TINY, "batch_size": 8, "eval_batch_size": 8, "epochs": 1})
source = task.make_source(config)
mesh = parallel.make_mesh()
seen = []
for batch in source.eval_batches("test", batch_size=8, mesh=mesh):
    assert len(batch["video"].sharding.device_set) == 8
    video, mask = np.asarray(batch["video"]), np.asarray(batch["mask"])
    seen += video[mask].tolist()
result = loop.train_and_evaluate(config, WORKDIR)
print(json.dumps({"seen": seen, "status": result.status, "count": result.summary["test/count"],
                  "n_test": len(source.catalogue.test)}))
"""


@pytest.mark.slow
def test_every_test_video_once_on_8_devices(store, tmp_path):
    code = (
        f"STORE = {store!r}\nWORKDIR = {str(tmp_path / 'w')!r}\nTINY = {TINY!r}\n" + EIGHT_DEVICES
    )
    proc = run_python(
        code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["seen"]) == list(range(9)) and out["n_test"] == 9
    assert out["status"] == "completed" and out["count"] == 9


@pytest.mark.slow
def test_stop_mid_epoch_resumes_to_the_same_state(store, tmp_path):
    config = tiny_config(store, data__protocol="xview", epochs=2)  # 24 train videos: 6 steps
    whole = loop.train_and_evaluate(config, str(tmp_path / "whole"))
    stopped = loop.train_and_evaluate(
        tiny_config(store, data__protocol="xview", epochs=2, run__stop_after_steps=3),
        str(tmp_path / "split"),
    )
    assert stopped.status == loop.STOPPED and int(stopped.state.step) == 3
    resumed = loop.train_and_evaluate(config, str(tmp_path / "split"))
    assert whole.status == resumed.status == loop.COMPLETED
    assert int(resumed.state.step) == 12
    for a, b in zip(
        jax.tree.leaves((whole.state.params, whole.state.batch_stats)),
        jax.tree.leaves((resumed.state.params, resumed.state.batch_stats)),
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert whole.summary["test/top1"] == resumed.summary["test/top1"]
    assert whole.summary["test/count"] == 12
    assert 0 <= whole.summary["test/view_top1"] <= 1
