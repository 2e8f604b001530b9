"""The ImageNet-scale experiment on tiny data: the streamed source and ImageNet's decoders,
ResNets, the recipes, Tables 3 and 4, several processes and devices (CPU)."""

import io
import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from _experiments_util import REPO
from _experiments_util import _env
from _experiments_util import load_config
from _experiments_util import run_module
from _experiments_util import run_python

from experiments.common import config as cfg
from experiments.common import grid
from experiments.common import loop
from experiments.common import optim
from experiments.common import report
from experiments.common.data import DataError
from experiments.common.data import stream
from experiments.imagenet import decoders
from experiments.imagenet import models

tfds = pytest.importorskip("tensorflow_datasets")
pytestmark = pytest.mark.usefixtures("fast_compile")

SIZE = 32
CONFIGS = os.path.join(REPO, "experiments", "imagenet", "configs")


def make_folder(root, classes=3, n_train=8, n_val=5, seed=0) -> str:
    """DIR/{train,val}/<wnid>/*.JPEG of random non-square images; class k brightens channel k.

    Per class, image 1 is grayscale, image 2 CMYK and image 3 a PNG named .JPEG (ImageNet has
    all three); the others are RGB JPEGs of assorted sizes.
    """
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(classes):
            folder = os.path.join(root, split, f"n{k:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                h, w = rng.randint(20, 70, 2)
                pixels = rng.randint(0, 120, (h, w, 3)).astype(np.uint8)
                pixels[..., k % 3] += 120
                image = Image.fromarray(pixels)
                path = os.path.join(folder, f"n{k:08d}_{i}.JPEG")
                if i == 1:
                    image.convert("L").save(path, "JPEG")
                elif i == 2:
                    image.convert("CMYK").save(path, "JPEG")
                elif i == 3:
                    image.save(path, "PNG")
                else:
                    image.save(path, "JPEG")
    return str(root)


def tiny_config(data_dir, **overrides):
    """The pycls recipe at CPU size: ResNet-18 of width 4 on 32x32 crops, CE+GSC(0.02, 2)."""
    base = dict(
        data__data_dir=data_dir,
        model__name="resnet18",
        model__width=4,
        data__image_size=SIZE,
        epochs=2,
        batch_size=8,
        eval_batch_size=4,
        loss__gsc__gamma=0.02,
        loss__gsc__top_c=2,
    )
    return load_config("imagenet", "pycls", **{**base, **overrides})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imagefolder"))


def _source(catalogue, train_crop="inception", eval_crop="short_side", lighting_std=0.1):
    train, evaluate = decoders.decoders(train_crop, eval_crop, SIZE, lighting_std)
    return stream.StreamSource(catalogue, train, evaluate, SIZE)


def test_folder_catalogue_lists_every_file(folder):
    catalogue = stream.folder_catalogue(folder)
    assert catalogue.class_names == ("n00000000", "n00000001", "n00000002")
    assert (catalogue.num_train, catalogue.num_eval) == (24, 15)
    assert list(catalogue.eval.labels) == [0] * 5 + [1] * 5 + [2] * 5
    assert os.path.basename(catalogue.eval.paths[6]) == "n00000001_1.JPEG"


def test_folder_catalogue_errors(tmp_path):
    with pytest.raises(stream.MissingDataError, match="not a directory"):
        stream.folder_catalogue(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(DataError, match=r"without images.*\['a'\]"):
        stream.folder_catalogue(str(tmp_path))
    with open(tmp_path / "train" / "a" / "x.JPEG", "wb") as f:
        f.write(_encode(Image.new("RGB", (4, 4))))
    with pytest.raises(DataError, match=r"/val' is not a folder"):
        stream.folder_catalogue(str(tmp_path))


def _encode(image: Image.Image, fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("decode", ["train", "eval"])
def test_decode_grayscale_cmyk_png_non_square(decode):
    tf = stream.tf()
    rng = np.random.RandomState(1)
    pixels = np.repeat(np.repeat(rng.randint(0, 255, (9, 15, 3)), 5, 0), 5, 1).astype(np.uint8)
    rgb = Image.fromarray(pixels)  # 45 x 75: not square
    train, evaluate = decoders.decoders("inception", "short_side", SIZE, 0.0)  # no lighting
    fn = (
        (lambda e: evaluate(tf.constant(e)))
        if decode == "eval"
        else (lambda e: train(tf.constant(e), tf.constant([3, 4], tf.int64)))
    )
    out = {
        name: np.asarray(fn(_encode(image, fmt)))
        for name, image, fmt in (
            ("rgb", rgb, "JPEG"),
            ("cmyk", rgb.convert("CMYK"), "JPEG"),
            ("gray", rgb.convert("L"), "JPEG"),
            ("png", rgb, "PNG"),
        )
    }
    for image in out.values():
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    # The same view of the same picture, whatever the colour space or format (PNG: lossless).
    assert np.mean(np.abs(out["cmyk"].astype(int) - out["png"])) < 8
    assert np.mean(np.abs(out["rgb"].astype(int) - out["png"])) < 8
    gray = out["gray"].astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_train_stream_is_a_function_of_seed_and_step(folder):
    source = _source(stream.folder_catalogue(folder))
    spe = source.steps_per_epoch(8)
    assert spe == 3

    def batches(start, seed=5):
        return list(
            source.host_train_batches(
                batch_size=8, start_step=start, num_steps=2 * spe + 2, seed=seed
            )
        )

    full = batches(0)
    assert len(full) == 2 * spe + 2
    for start in (1, spe + 1):  # mid-epoch, and across an epoch boundary
        resumed = batches(start)
        assert len(resumed) == len(full) - start
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    # Each epoch visits every class's images in a new order: 8 labels per step, all 24 per epoch.
    for epoch in range(2):
        labels = np.concatenate([b["label"] for b in full[epoch * spe : (epoch + 1) * spe]])
        assert np.bincount(labels, minlength=3).tolist() == [8, 8, 8]
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(full, full[spe:]))
    other = next(source.host_train_batches(batch_size=8, start_step=0, num_steps=1, seed=6))
    assert not np.array_equal(other["image"], full[0]["image"])


@pytest.mark.parametrize("eval_batch", [4, 15, 16])
def test_eval_covers_every_image_once(folder, eval_batch):
    tf = stream.tf()
    source = _source(stream.folder_catalogue(folder))
    batches = list(source.host_eval_batches(eval_batch))
    assert len(batches) == -(-15 // eval_batch)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 15 and mask[:15].all()  # padding only at the end
    images = np.concatenate([b["image"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    np.testing.assert_array_equal(labels, source.catalogue.eval.labels)
    for path, image in zip(source.catalogue.eval.paths, images):
        with open(path, "rb") as f:
            np.testing.assert_array_equal(
                image, np.asarray(source.decode_eval(tf.constant(f.read())))
            )


def test_tfds_mock_stream_resumes_and_covers_the_evaluation_split():
    with tfds.testing.mock_data(num_examples=10):
        catalogue = stream.tfds_catalogue("oxford_flowers102", prepare=False)
        assert (catalogue.num_classes, catalogue.num_train, catalogue.num_eval) == (102, 10, 10)
        source = _source(catalogue, "resize_random", "square", 0.0)
        full = list(source.host_train_batches(batch_size=4, start_step=0, num_steps=5, seed=0))
        resumed = list(source.host_train_batches(batch_size=4, start_step=3, num_steps=5, seed=0))
        assert len(full) == 5 and len(resumed) == 2
        for a, b in zip(full[3:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
        batches = list(source.host_eval_batches(4))
        assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 10


@pytest.mark.slow
def test_tfds_mock_data_end_to_end(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        config = load_config(
            "imagenet",
            "ols_flowers",
            model__name="resnet18",
            model__width=4,
            data__image_size=SIZE,
            epochs=1,
            batch_size=4,
            eval_batch_size=4,
            loss__name="ols",
        )
        result = loop.train_and_evaluate(config, str(tmp_path / "w"))
    assert result.status == "completed" and result.summary["num_test_examples"] == 10
    assert result.summary["dataset"] == "oxford_flowers102" and result.summary["test/count"] == 10
    assert result.summary["loss"] == "OLS"


def test_missing_imagenet_archives_say_where_to_put_them(tmp_path):
    with pytest.raises(stream.MissingDataError) as error:
        stream.tfds_catalogue("imagenet2012", str(tmp_path))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message
    workdir = tmp_path / "w"
    with pytest.raises(stream.MissingDataError, match="ILSVRC2012_img_val.tar"):
        loop.train_and_evaluate(
            tiny_config(str(tmp_path), data__dataset="imagenet2012"), str(workdir)
        )
    assert not workdir.exists()  # stopped before any work


@pytest.mark.slow
def test_cli_says_where_to_put_the_imagenet_archives(tmp_path):
    workdir = tmp_path / "w"
    proc = run_module(
        [
            "experiments.imagenet",
            f"--workdir={workdir}",
            "--config.data.dataset=imagenet2012",
            f"--config.data.data_dir={tmp_path}",
        ]
    )
    assert proc.returncode == 1 and "ILSVRC2012_img_val.tar" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data__dataset": "cifar"}, "config.data.dataset must be one of folder"),
        ({"data__data_dir": ""}, "config.data.dataset 'folder' needs config.data.data_dir"),
        ({"model__name": "vgg"}, "config.model.name must be one of resnet18"),
        ({"data__train_crop": "random"}, "config.data.train_crop"),
        ({"data__lighting_std": -1.0}, "config.data.lighting_std"),
        ({"loss__gsc__top_c": 4}, r"config.loss.gsc.top_c must be in \[1, num_classes=3\]"),
    ],
)
def test_bad_config_names_the_field_before_training(folder, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(tiny_config(folder, **overrides), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_recipes():
    pycls = load_config("imagenet", "pycls")
    assert (optim.learning_rate(pycls), pycls.batch_size, pycls.epochs) == (0.2, 256, 100)
    assert optim.learning_rate(load_config("imagenet", "pycls", batch_size=64)) == 0.05
    _, lr_fn = optim.make(pycls, steps_per_epoch=10)
    np.testing.assert_allclose(
        [lr_fn(s) for s in (0, 9, 10, 500, 999)],
        [
            0.2,
            0.2,
            0.1 * (1 + np.cos(np.pi / 100)),
            0.1,
            0.2 * 0.5 * (1 + np.cos(np.pi * 99 / 100)),
        ],
        rtol=1e-4,
    )
    flowers = load_config("imagenet", "ols_flowers")
    assert flowers.data.dataset == "oxford_flowers102" and optim.learning_rate(flowers) == 0.01
    _, lr_fn = optim.make(flowers, steps_per_epoch=10)
    np.testing.assert_allclose(
        [lr_fn(s) for s in (449, 450, 799, 800)], [0.01, 0.001, 0.001, 0.0001], rtol=1e-6
    )


@pytest.mark.parametrize(
    "name, params", [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("resnet101", 44_549_160)]
)
def test_resnet_parameter_counts(name, params):
    """torchvision's counts for the same architectures (1000 classes)."""
    model = models.create_model(name, 1000)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == params


def test_resnet50_is_v1_5_and_bf16_computes_in_bf16():
    model = models.create_model("resnet50", 10, bf16=True, width=4)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    convs = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv):
            convs.append((context.module.kernel_size, context.module.strides, out.dtype))
        return out

    with nn.intercept_methods(record):  # shapes and dtypes only: traced, not run
        logits, _ = jax.eval_shape(
            lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
        )
    strided = {(k, s) for k, s, _ in convs if s not in (1, (1, 1))}
    # Stride 2 on the stem's 7x7, the 3x3 of each stage's first block and its 1x1 shortcut.
    assert strided == {((7, 7), 2), ((3, 3), 2), ((1, 1), 2)}
    assert sum(1 for k, s, _ in convs if k == (3, 3) and s == 2) == 3
    assert {np.dtype(d) for _, _, d in convs} == {np.dtype(jnp.bfloat16)}
    assert logits.dtype == jnp.float32
    assert {np.dtype(x.dtype) for x in jax.tree.leaves(variables)} == {np.dtype(np.float32)}


def _write_table(name: str, workdir: str) -> str:
    """The grid's table from whatever summaries WORKDIR holds (no row trained)."""
    config, table = cfg.load(os.path.join(CONFIGS, f"{name}.py"))
    results = []
    for row in table.rows:
        run_config = cfg.apply_overrides(config, row.overrides)
        workdirs = grid.row_workdirs(table, row, workdir)
        results.append(
            grid.CellResult(
                row,
                grid._label(run_config),
                workdirs,  # pylint: disable=protected-access
                [report.read_summary(w) for w in workdirs],
            )
        )
    return grid.write(table, results, workdir)


def test_tables_mark_rows_not_run_and_quote_the_paper(tmp_path):
    row = tmp_path / "table4" / "ce_gsc"
    os.makedirs(row)
    (row / "summary.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "test/top1": 0.9,
                "test/top5": 0.99,
                "test/ece": 0.05,
                "epochs": 3,
            }
        )
    )
    (row / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": e, "test/top1": a}) + "\n"
            for e, a in ((1, 0.8), (2, 0.91), (3, 0.9))
        )
    )
    text = _write_table("table4", str(tmp_path))
    lines = [x for x in text.splitlines() if x.startswith(("| ce |", "| ce_gsc |"))]
    assert lines[0] == ("| ce | CE | not run | 90.69 | not run | not run | 97.57 | not run |")
    assert lines[1] == (
        "| ce_gsc | CE+GSC(0.05,9) | 90.00 | 92.36 | 91.00 | 99.00 | 98.10 | 5.00 |"
    )
    assert text.count("not run") == 5 * 4
    table3 = _write_table("table3", str(tmp_path))
    assert "| rn50_ce | CE | not run | 23.03 |" in table3
    assert "| RN-50 | OLS | 22.28 | 6.39 |" in table3


TWO_PROCESSES = """
import json, os
import jax
jax.config.update("jax_disable_most_optimizations", True)
from experiments.common import loop, parallel
parallel.maybe_initialize_distributed(False)  # GSC_JAX_MULTIHOST=1 in the two-process run
from test_experiments_imagenet import tiny_config
result = loop.train_and_evaluate(tiny_config(os.environ["DATA"], eval_batch_size=8,
                                             run__progress=False), os.environ["WORKDIR"])
print("RESULT", json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
      "devices": jax.device_count(), "status": result.status,
      "param_sums": [float(jax.numpy.sum(x)) for x in jax.tree.leaves(result.state.params)]}))
"""


@pytest.mark.slow
def test_two_processes_match_one_process(folder, tmp_path):
    """Each process reads its half of every global batch (and of the evaluation batches)."""

    def start(workdir, devices, extra=None):
        env = _env(
            {
                "JAX_PLATFORMS": "cpu",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "DATA": folder,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "WORKDIR": str(workdir),
                **(extra or {}),
            }
        )
        return subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def results(procs):
        try:
            outs = [p.communicate(timeout=1800) for p in procs]  # only a hang gets this far
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        return [
            json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
            for out, _ in outs
        ]

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    pair = [
        start(
            tmp_path / "two",
            1,
            {
                "GSC_JAX_MULTIHOST": "1",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            },
        )
        for i in range(2)
    ]
    two = results(pair)
    (one,) = results([start(tmp_path / "one", 2)])
    assert [r["processes"] for r in two] == [2, 2] and one["processes"] == 1
    assert one["devices"] == two[0]["devices"] == 2
    assert one["status"] == two[0]["status"] == "completed"
    read = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
    for a, b in zip(read("two"), read("one"), strict=True):
        for key in ("train/loss", "test/nll", "test/top1", "test/ece"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(two[0]["param_sums"], one["param_sums"], rtol=1e-4, atol=1e-5)


RESHARD = """
import json, os
import jax
jax.config.update("jax_disable_most_optimizations", True)
from experiments.common import loop
from test_experiments_imagenet import tiny_config
config = tiny_config(os.environ["DATA"], eval_batch_size=8, run__progress=False,
                     run__stop_after_steps=int(os.environ["STOP"]))
result = loop.train_and_evaluate(config, os.environ["WORKDIR"])
print("RESULT", json.dumps({"devices": jax.device_count(), "status": result.status,
                            "step": int(result.state.step)}))
"""


@pytest.mark.slow
def test_eight_devices_match_one_device_and_resume_on_it(folder, tmp_path):
    """Epoch 1 and a step of epoch 2 on 8 devices, then the rest on 1 device (the checkpoint
    resharded), equal the uninterrupted 1-device run: with cross-device BatchNorm the batch
    statistics over 8 shards are those of the whole batch (per-device statistics over one
    example each would differ)."""

    def run(workdir, devices, stop):
        flags = f"--xla_force_host_platform_device_count={devices}"
        proc = run_python(
            RESHARD,
            {
                "XLA_FLAGS": flags,
                "JAX_PLATFORMS": "cpu",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "DATA": folder,
                "WORKDIR": str(tmp_path / workdir),
                "STOP": str(stop),
            },
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])

    assert run("moved", 8, 4) == {"devices": 8, "status": "stopped", "step": 4}
    assert run("moved", 1, 0) == {"devices": 1, "status": "completed", "step": 6}
    assert run("whole", 1, 0)["status"] == "completed"
    read = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
    for a, b in zip(read("moved"), read("whole"), strict=True):
        for key in ("train/loss", "test/nll", "test/top1", "test/ece"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
