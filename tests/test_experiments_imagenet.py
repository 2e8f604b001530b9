"""The ImageNet-scale experiment on tiny data: streaming pipeline, ResNets, runner, tables (CPU)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from _experiments_util import run_module, run_python
from experiments.common import losses
from experiments.imagenet import models, pipeline, tables, train

tfds = pytest.importorskip("tensorflow_datasets")

SIZE = 32


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


def tiny_run_config(data_dir, **changes) -> train.RunConfig:
    base = dict(dataset="folder", data_dir=data_dir, model="resnet18", width=4,
                image_size=SIZE, epochs=2, batch_size=8, eval_batch_size=4, progress=False,
                loss=losses.LossSpec("ce", gsc_gamma=0.02, gsc_top_c=2))
    base.update(changes)
    return train.RunConfig(**base)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imagefolder"))


def test_folder_source_lists_every_file(folder):
    source = pipeline.folder_source(folder)
    assert source.class_names == ("n00000000", "n00000001", "n00000002")
    assert (source.num_train, source.num_eval) == (24, 15)
    assert list(source.eval.labels) == [0] * 5 + [1] * 5 + [2] * 5


def test_folder_source_errors(tmp_path):
    with pytest.raises(pipeline.MissingDataError, match="not a directory"):
        pipeline.folder_source(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(pipeline.MissingDataError, match="no images"):
        pipeline.folder_source(str(tmp_path))


def _encode(image: Image.Image, fmt="JPEG") -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("decode", ["train", "eval"])
def test_decode_grayscale_cmyk_png_non_square(decode):
    rng = np.random.RandomState(1)
    pixels = np.repeat(np.repeat(rng.randint(0, 255, (9, 15, 3)), 5, 0), 5, 1).astype(np.uint8)
    rgb = Image.fromarray(pixels)  # 45 x 75: not square
    fn = (lambda e: pipeline.decode_eval(e, image_size=SIZE)) if decode == "eval" else (
        lambda e: pipeline.decode_train(e, np.array([3, 4], np.int64), image_size=SIZE))
    out = {name: np.asarray(fn(_encode(image, fmt)))
           for name, image, fmt in (("rgb", rgb, "JPEG"), ("cmyk", rgb.convert("CMYK"), "JPEG"),
                                    ("gray", rgb.convert("L"), "JPEG"), ("png", rgb, "PNG"))}
    for image in out.values():
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    # The same view of the same picture, whatever the colour space or format (PNG: lossless).
    assert np.mean(np.abs(out["cmyk"].astype(int) - out["png"])) < 8
    assert np.mean(np.abs(out["rgb"].astype(int) - out["png"])) < 8
    gray = out["gray"].astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_train_stream_is_a_function_of_seed_and_step(folder):
    source = pipeline.folder_source(folder)
    config = pipeline.StreamConfig(global_batch=8, eval_batch=4, image_size=SIZE, seed=5,
                                   lighting_std=0.1)
    spe = pipeline.steps_per_epoch(source, config)
    assert spe == 3
    full = list(pipeline.train_batches(source, config, start_step=0, num_steps=2 * spe + 2))
    assert len(full) == 2 * spe + 2
    for start in (1, spe + 1):  # mid-epoch, and across an epoch boundary
        resumed = list(pipeline.train_batches(source, config, start_step=start,
                                              num_steps=2 * spe + 2))
        assert len(resumed) == len(full) - start
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    # Each epoch visits every class's images in a new order: 8 labels per step, all 24 per epoch.
    for epoch in range(2):
        labels = np.concatenate([b["label"] for b in full[epoch * spe:(epoch + 1) * spe]])
        assert np.bincount(labels, minlength=3).tolist() == [8, 8, 8]
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(full, full[spe:]))
    other = next(pipeline.train_batches(source, config.__class__(
        **{**config.__dict__, "seed": 6}), start_step=0, num_steps=1))
    assert not np.array_equal(other["image"], full[0]["image"])


@pytest.mark.parametrize("eval_batch", [4, 15, 16])
def test_eval_covers_every_image_once(folder, eval_batch):
    source = pipeline.folder_source(folder)
    config = pipeline.StreamConfig(global_batch=8, eval_batch=eval_batch, image_size=SIZE)
    batches = list(pipeline.eval_batches(source, config))
    assert len(batches) == pipeline.num_eval_batches(source, config) == -(-15 // eval_batch)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 15 and mask[:15].all()  # padding only at the end
    images = np.concatenate([b["image"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    np.testing.assert_array_equal(labels, source.eval.labels)
    for path, image in zip(source.eval.paths, images):
        with open(path, "rb") as f:
            np.testing.assert_array_equal(image, pipeline.decode_eval(f.read(), image_size=SIZE))


def test_tfds_mock_data_end_to_end(tmp_path, fast_compile):
    with tfds.testing.mock_data(num_examples=10):
        source = pipeline.tfds_source("oxford_flowers102", prepare=False)
        assert (source.num_classes, source.num_train, source.num_eval) == (102, 10, 10)
        config = pipeline.StreamConfig(global_batch=4, eval_batch=4, image_size=SIZE,
                                       train_crop="resize_random", eval_crop="square")
        full = list(pipeline.train_batches(source, config, start_step=0, num_steps=5))
        resumed = list(pipeline.train_batches(source, config, start_step=3, num_steps=5))
        for a, b in zip(full[3:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
        batches = list(pipeline.eval_batches(source, config))
        assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 10
        result = train.run(tiny_run_config(None, dataset="oxford_flowers102", epochs=1,
                                           batch_size=4, loss=losses.LossSpec("ols")),
                           str(tmp_path / "w"), source)
    assert result.status == "completed" and result.summary["num_test_examples"] == 10
    assert result.summary["recipe"]["name"] == "ols_flowers"


def test_missing_imagenet_archives_say_where_to_put_them(tmp_path):
    with pytest.raises(pipeline.MissingDataError) as error:
        pipeline.tfds_source("imagenet2012", str(tmp_path))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message
    workdir = tmp_path / "w"
    proc = run_module(["experiments.imagenet", "--workdir", str(workdir), "--dataset",
                       "imagenet2012", "--data_dir", str(tmp_path)], timeout=120)
    assert proc.returncode != 0 and "ILSVRC2012_img_val.tar" in proc.stderr
    assert not workdir.exists()  # stopped before any work


def test_validate_names_the_flag():
    with pytest.raises(ValueError, match="--dataset"):
        train.validate(train.RunConfig(dataset="cifar"))
    with pytest.raises(ValueError, match="--data_dir"):
        train.validate(train.RunConfig(dataset="folder"))
    with pytest.raises(ValueError, match="--model"):
        train.validate(train.RunConfig(dataset="imagenet2012", model="vgg"))
    with pytest.raises(ValueError, match="gsc_top_c"):
        train.validate(train.RunConfig(dataset="imagenet2012",
                                       loss=losses.LossSpec(gsc_gamma=0.1, gsc_top_c=11)), 10)
    with pytest.raises(ValueError, match="--rows"):
        tables.check_rows(3, ["rn50_ce", "rn18"])


def test_recipes():
    pycls = train.resolved(train.RunConfig(dataset="imagenet2012"))
    assert (pycls["learning_rate"], pycls["batch_size"], pycls["epochs"]) == (0.2, 256, 100)
    assert train.resolved(train.RunConfig(dataset="folder", batch_size=64))["learning_rate"] == 0.05
    tx, lr_fn = train.make_tx(pycls, steps_per_epoch=10)
    np.testing.assert_allclose([lr_fn(s) for s in (0, 9, 10, 500, 999)],
                               [0.2, 0.2, 0.1 * (1 + np.cos(np.pi / 100)), 0.1, 0.2 * 0.5 * (
                                   1 + np.cos(np.pi * 99 / 100))], rtol=1e-4)
    flowers = train.resolved(train.RunConfig(dataset="oxford_flowers102"))
    _, lr_fn = train.make_tx(flowers, steps_per_epoch=10)
    np.testing.assert_allclose([lr_fn(s) for s in (449, 450, 799, 800)],
                               [0.01, 0.001, 0.001, 0.0001], rtol=1e-6)


@pytest.mark.parametrize("name, params", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                          ("resnet101", 44_549_160)])
def test_resnet_parameter_counts(name, params):
    """torchvision's counts for the same architectures (1000 classes)."""
    model = models.create_model(name, 1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))
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
        logits, _ = jax.eval_shape(lambda v: model.apply(v, x, train=True,
                                                         mutable=["batch_stats"]), variables)
    strided = {(k, s) for k, s, _ in convs if s not in (1, (1, 1))}
    # Stride 2 on the stem's 7x7, the 3x3 of each stage's first block and its 1x1 shortcut.
    assert strided == {((7, 7), 2), ((3, 3), 2), ((1, 1), 2)}
    assert sum(1 for k, s, _ in convs if k == (3, 3) and s == 2) == 3
    assert {np.dtype(d) for _, _, d in convs} == {np.dtype(jnp.bfloat16)}
    assert logits.dtype == jnp.float32
    assert {np.dtype(x.dtype) for x in jax.tree.leaves(variables)} == {np.dtype(np.float32)}


@pytest.fixture
def fast_compile():
    """XLA with most optimisations off: these tiny runs spend their time compiling."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def test_write_table_marks_rows_not_run(tmp_path):
    row = tmp_path / "table4" / "ce_gsc"
    os.makedirs(row)
    (row / "summary.json").write_text(json.dumps({
        "status": "completed", "test_accuracy": 0.9, "test_top5": 0.99,
        "best_test_accuracy": 0.91, "test_ece": 0.05, "epochs": 3, "image_size": 32,
        "dataset": "oxford_flowers102", "images_per_s": 1.0}))
    text = open(tables.write_table(4, str(tmp_path))).read()
    lines = [x for x in text.splitlines() if x.startswith("| CE")]
    assert lines[0].startswith("| CE | not run | not run |") and "90.69" in lines[0]
    assert lines[1].startswith("| CE+GSC(0.05,9) | 3 | 90.00 | 91.00 | 92.36 | 99.00 |")
    assert text.count("not run") == 5 * 5
    table3 = open(tables.write_table(3, str(tmp_path))).read()
    assert "23.03" in table3 and "| RN-50 | OLS | 22.28 | 6.39 |" in table3


TWO_PROCESSES = """
import json, os, sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
from experiments.common import parallel
parallel.maybe_initialize_distributed(False)  # GSC_JAX_MULTIHOST=1 in the two-process run
sys.path.insert(0, "tests")
from test_experiments_imagenet import tiny_run_config
from experiments.imagenet import train
result = train.run(tiny_run_config(os.environ["DATA"], eval_batch_size=8), os.environ["WORKDIR"])
print("RESULT", json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
      "devices": jax.device_count(), "status": result.status,
      "param_sums": [float(jax.numpy.sum(x)) for x in jax.tree.leaves(result.state.params)]}))
"""


def test_two_processes_match_one_process(folder, tmp_path):
    """Each process reads its half of every global batch (and of the evaluation batches)."""
    import socket
    import subprocess
    import sys
    from _experiments_util import REPO

    def start(workdir, devices, extra=None):
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
                   JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", DATA=folder,
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   WORKDIR=str(workdir), **(extra or {}))
        return subprocess.Popen([sys.executable, "-c", TWO_PROCESSES], cwd=REPO, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def results(procs):
        outs = [p.communicate(timeout=400) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        return [json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
                for out, _ in outs]

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    pair = [start(tmp_path / "two", 1, {"GSC_JAX_MULTIHOST": "1", "JAX_NUM_PROCESSES": "2",
                                        "JAX_PROCESS_ID": str(i),
                                        "JAX_COORDINATOR_ADDRESS": f"localhost:{port}"})
            for i in range(2)]
    two = results(pair)
    (one,) = results([start(tmp_path / "one", 2)])
    assert [r["processes"] for r in two] == [2, 2] and one["processes"] == 1
    assert one["devices"] == two[0]["devices"] == 2
    read = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
    for a, b in zip(read("two"), read("one"), strict=True):
        for key in ("train_loss", "test_nll", "test_top1", "test_ece"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(two[0]["param_sums"], one["param_sums"], rtol=1e-4, atol=1e-5)


RESHARD = """
import json, os, sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
sys.path.insert(0, "tests")
from test_experiments_imagenet import tiny_run_config
from experiments.imagenet import train
config = tiny_run_config(os.environ["DATA"], eval_batch_size=8,
                         stop_after_steps=int(os.environ["STOP"]))
result = train.run(config, os.environ["WORKDIR"])
print("RESULT", json.dumps({"devices": jax.device_count(), "status": result.status,
                            "step": int(result.state.step)}))
"""


def test_eight_devices_match_one_device_and_resume_on_it(folder, tmp_path):
    """Epoch 1 and a step of epoch 2 on 8 devices, then the rest on 1 device (the checkpoint
    resharded), equal the uninterrupted 1-device run: with cross-device BatchNorm the batch
    statistics over 8 shards are those of the whole batch (per-device statistics over one
    example each would differ)."""

    def run(workdir, devices, stop):
        flags = f"--xla_force_host_platform_device_count={devices}"
        proc = run_python(RESHARD, {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
                                    "TF_CPP_MIN_LOG_LEVEL": "2", "DATA": folder,
                                    "WORKDIR": str(tmp_path / workdir), "STOP": str(stop)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])

    assert run("moved", 8, 4) == {"devices": 8, "status": "stopped", "step": 4}
    assert run("moved", 1, 0) == {"devices": 1, "status": "completed", "step": 6}
    assert run("whole", 1, 0)["status"] == "completed"
    read = lambda d: [json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]  # noqa: E731
    for a, b in zip(read("moved"), read("whole"), strict=True):
        for key in ("train_loss", "test_nll", "test_top1", "test_ece"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
