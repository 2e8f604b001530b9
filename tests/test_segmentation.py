"""Tests of the segmentation experiment (Kanezaki 2018 + GSC): pieces, synthetic scene, inputs."""

import io
import json
import logging
import os
import tempfile

import PIL.Image
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _experiments_util import QUIET
from _experiments_util import config_file
from absl.testing import absltest
from absl.testing import parameterized

import gsc_jax
from experiments.common import config as cfg
from experiments.common import grid
from experiments.common import loop
from experiments.common import losses
from experiments.segmentation import data
from experiments.segmentation import evaluate
from experiments.segmentation import model
from experiments.segmentation import task

pytestmark = pytest.mark.usefixtures("fast_compile")

# Superpixels of about 15 pixels, as the reference's 10000 on a 321 x 481 image.
_SMALL = {
    "data.slic_n_segments": 150,
    "data.iterations": 100,
    "data.min_labels": 4,
    "data.max_side": 0,
}


def _scene_config(directory, height, width, seed=0, **overrides):
    """The kanezaki config and grid on a synthetic scene written as DIRECTORY/scene.png with its
    ground truth DIRECTORY/truth.npy; `overrides` are dotted config paths."""
    image, truth = data.synthetic_scene(height, width, seed=seed)
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, "PNG")
    with open(os.path.join(directory, "scene.png"), "wb") as f:
        f.write(buffer.getvalue())
    np.save(os.path.join(directory, "truth.npy"), truth)
    return cfg.load(
        config_file("segmentation", "kanezaki"),
        {
            **QUIET,
            "data.image": os.path.join(directory, "scene.png"),
            "data.ground_truth": os.path.join(directory, "truth.npy"),
            **_SMALL,
            **overrides,
        },
    )


def _model_and_inputs(height=12, width=16, seed=0):
    """Logits of the net as a function of its params, params, and a batch for loss tests."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    segment_ids, _ = model.superpixels(pixels, 20, 100.0)
    net = model.KanezakiNet(n_channel=10)
    image = jnp.asarray(pixels, jnp.float32)[None] / 255.0
    variables = jax.jit(net.init)(jax.random.key(seed), image)
    batch_stats = variables["batch_stats"]

    def logits_of(params):
        return net.apply(
            {"params": params, "batch_stats": batch_stats}, image, mutable=["batch_stats"]
        )[0]

    return logits_of, variables["params"], {"label": jnp.asarray(segment_ids)}


class PiecesTest(parameterized.TestCase):
    def test_refine_labels_majority_and_ties_to_smallest(self):
        labels = jnp.array([3, 3, 1, 5, 2, 2, 5, 7])
        segments = jnp.array([0, 0, 0, 1, 1, 1, 1, 2])
        refined = model.refine_labels(labels, segments, 3, 8)
        np.testing.assert_array_equal(refined, [3, 3, 3, 2, 2, 2, 2, 7])

    def test_count_labels(self):
        self.assertEqual(int(model.count_labels(jnp.array([4, 0, 4, 9]), 10)), 3)

    def test_network_shapes(self):
        init = model.KanezakiNet().init
        params = jax.eval_shape(init, jax.random.key(0), jnp.ones((1, 5, 6, 3)))["params"]
        self.assertEqual(params["TorchConv_0"]["kernel"].shape, (3, 3, 3, 100))
        self.assertEqual(params["TorchConv_1"]["kernel"].shape, (3, 3, 100, 100))
        self.assertEqual(params["TorchConv_2"]["kernel"].shape, (1, 1, 100, 100))
        self.assertLen(params, 6)  # 3 convs, 3 batch norms

    def test_scores(self):
        truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
        self.assertAlmostEqual(evaluate.hungarian_mean_iou(truth + 7, truth), 1.0)
        merged = np.zeros_like(truth)
        self.assertAlmostEqual(evaluate.hungarian_mean_iou(merged, truth), 0.25)  # (0.5 + 0) / 2
        self.assertAlmostEqual(evaluate.segmentation_covering(merged, truth), 0.5)


class GscGradientTest(absltest.TestCase):
    def test_loss_includes_gamma_times_mean_gsc_and_gradient_changes(self):
        """The task's objective, as the train step builds it: CE (+ GSC) against the refined
        self-labels of the logits (`task.targets`, no gradient through them)."""
        logits_of, params, batch = _model_and_inputs()

        def loss_and_grad(gamma):
            objective = losses.make_objective(losses.LossSpec("ce", gsc_gamma=gamma, gsc_top_c=7))

            def loss_fn(params):
                logits = logits_of(params)
                return objective(logits, task.targets(jax.lax.stop_gradient(logits), batch))

            return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

        (base, base_parts), base_grads = loss_and_grad(0.0)
        (loss, parts), grads = loss_and_grad(0.3)
        gsc = gsc_jax.gsc_term(jax.jit(logits_of)(params), top_c=7).mean()
        self.assertGreater(float(gsc), 0.0)
        np.testing.assert_allclose(parts["gsc_term"], gsc, rtol=1e-5)
        np.testing.assert_allclose(loss, base + 0.3 * gsc, rtol=1e-5)
        np.testing.assert_allclose(parts["base_loss"], base_parts["base_loss"], rtol=1e-6)
        difference = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, base_grads)
        self.assertGreater(max(jax.tree.leaves(difference)), 1e-6)


class SyntheticSceneTest(absltest.TestCase):
    def _tempdir(self):
        return self.enterContext(tempfile.TemporaryDirectory())

    @pytest.mark.slow
    def test_four_flat_regions_are_recovered(self):
        # 100 iterations at most, stopping at <= 4 labels; the four regions are found.
        directory = self._tempdir()
        config, _ = _scene_config(directory, 48, 48, **{"loss.gsc.gamma": 0.3})
        result = loop.train_and_evaluate(config, os.path.join(directory, "run"))
        self.assertEqual(result.status, loop.COMPLETED)
        self.assertGreater(result.summary["image/mean_iou"], 0.6)
        self.assertGreater(result.summary["image/covering"], 0.6)

    @pytest.mark.slow
    def test_the_grid_writes_figures_and_scores(self):
        directory = self._tempdir()
        # min_labels=100 >= labels at the first iteration: both runs stop after it (stopping rule).
        config, g = _scene_config(
            directory, 20, 24, **{"data.min_labels": 100, "data.slic_n_segments": 30}
        )
        workdir = os.path.join(directory, "runs")
        grid.run(g, config, workdir)
        for name in (
            "comparison.png",
            "labels_per_iteration.png",
            "segmentation.md",
            "segmentation.json",
        ):
            self.assertTrue(os.path.isfile(os.path.join(workdir, name)), name)
        saved = grid.results_json(workdir, "segmentation")
        self.assertEqual([r["row"] for r in saved["rows"]], ["baseline", "gsc"])
        for row in ("baseline", "gsc"):
            with open(os.path.join(workdir, "segmentation", row, "summary.json")) as f:
                summary = json.load(f)
            self.assertBetween(summary["image/mean_iou"], 0.0, 1.0)
            self.assertLen(summary["image/n_labels_per_iteration"], 1)
            self.assertEqual(summary["image/iterations"], 1)
            self.assertTrue(
                os.path.isfile(os.path.join(workdir, "segmentation", row, "image_labels.png"))
            )


class InputTest(parameterized.TestCase):
    def _tempdir(self):
        return self.enterContext(tempfile.TemporaryDirectory())

    def test_missing_file_names_the_path(self):
        with pytest.raises(FileNotFoundError, match="nowhere.png"):
            data.load_image("/nowhere/nowhere.png")

    def test_not_an_image_names_the_path(self):
        path = os.path.join(self._tempdir(), "notes.png")
        with open(path, "w") as f:
            f.write("not an image")
        with pytest.raises(ValueError, match="notes.png"):
            data.load_image(path)

    @parameterized.parameters(
        ("L", np.uint8, (5, 6)),
        ("I;16", np.uint16, (5, 6)),
        ("RGBA", np.uint8, (5, 6, 4)),
        ("LA", np.uint8, (5, 6, 2)),
        ("P", np.uint8, (5, 6)),
    )
    def test_converted_to_rgb_with_a_log_line(self, mode, dtype, shape):
        values = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
        image = PIL.Image.fromarray(values, mode="L" if mode == "P" else None)
        image = image.convert("P") if mode == "P" else image
        path = os.path.join(self._tempdir(), "in.png")
        image.save(path)
        with self.assertLogs(level=logging.INFO) as logs:
            rgb = data.load_image(path)
        self.assertIn("converted to RGB", "".join(logs.output))
        self.assertEqual((rgb.shape, rgb.dtype), ((5, 6, 3), np.uint8))
        if mode in ("L", "RGBA"):
            np.testing.assert_array_equal(
                rgb,
                np.broadcast_to(values[..., None] if mode == "L" else values[..., :3], (5, 6, 3)),
            )

    def test_ground_truth_colours_become_ids(self):
        colours = np.zeros((4, 4, 3), np.uint8)
        colours[:, 2:] = (255, 0, 0)
        path = os.path.join(self._tempdir(), "gt.png")
        PIL.Image.fromarray(colours).save(path)
        np.testing.assert_array_equal(data.load_ground_truth(path), np.repeat([[0, 0, 1, 1]], 4, 0))

    def test_downscale_and_upscale(self):
        image = np.zeros((300, 450, 3), np.uint8)
        self.assertEqual(data.downscale(image, 90).shape, (60, 90, 3))
        self.assertEqual(data.downscale(image, 0).shape, image.shape)
        labels = np.arange(6).reshape(2, 3)
        np.testing.assert_array_equal(data.upscale_labels(labels, (4, 6))[::2, ::2], labels)


if __name__ == "__main__":
    absltest.main()
