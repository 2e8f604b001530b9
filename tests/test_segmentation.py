"""Tests of the segmentation experiment (Kanezaki 2018 + GSC): pieces, synthetic scene, inputs."""

import dataclasses
import json
import logging
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from absl.testing import absltest
from absl.testing import parameterized

import gsc_jax
from experiments.segmentation import compare
from experiments.segmentation import data
from experiments.segmentation import evaluate
from experiments.segmentation import train

# Superpixels of about 15 pixels, as the reference's 10000 on a 321 x 481 image.
_SMALL = train.Config(slic_n_segments=150, max_iter=100, min_labels=4)


def _model_and_inputs(height=12, width=16, seed=0):
    """Net, its train-mode apply, params, a random image and superpixels for loss tests."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    segment_ids, num_segments = train.superpixels(pixels, dataclasses.replace(
        _SMALL, slic_n_segments=20))
    model = train.KanezakiNet(n_channel=10)
    image = jnp.asarray(pixels, jnp.float32)[None] / 255.0
    variables = jax.jit(model.init)(jax.random.key(seed), image)
    apply = train.make_apply(model, variables["batch_stats"])
    return apply, variables["params"], image, jnp.asarray(segment_ids), num_segments


class PiecesTest(parameterized.TestCase):

    def test_refine_labels_majority_and_ties_to_smallest(self):
        labels = jnp.array([3, 3, 1, 5, 2, 2, 5, 7])
        segments = jnp.array([0, 0, 0, 1, 1, 1, 1, 2])
        refined = train.refine_labels(labels, segments, 3, 8)
        np.testing.assert_array_equal(refined, [3, 3, 3, 2, 2, 2, 2, 7])

    def test_count_labels(self):
        self.assertEqual(int(train.count_labels(jnp.array([4, 0, 4, 9]), 10)), 3)

    def test_network_shapes(self):
        init = train.KanezakiNet().init
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
        apply, params, image, segment_ids, num_segments = _model_and_inputs()

        def loss_and_grad(gamma):
            loss_fn = train.make_loss_fn(apply, 10, num_segments=num_segments, gamma=gamma,
                                         top_c=7)
            return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, image, segment_ids)

        (base, base_metrics), base_grads = loss_and_grad(0.0)
        (loss, metrics), grads = loss_and_grad(0.3)
        gsc = gsc_jax.gsc_term(jax.jit(apply)(params, image), top_c=7).mean()
        self.assertGreater(float(gsc), 0.0)
        np.testing.assert_allclose(metrics["gsc"], gsc, rtol=1e-5)
        np.testing.assert_allclose(loss, base + 0.3 * gsc, rtol=1e-5)
        np.testing.assert_allclose(metrics["ce"], base_metrics["ce"], rtol=1e-6)
        difference = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, base_grads)
        self.assertGreater(max(jax.tree.leaves(difference)), 1e-6)


class SyntheticSceneTest(absltest.TestCase):

    def _tempdir(self):
        return self.enterContext(tempfile.TemporaryDirectory())

    def test_four_flat_regions_are_recovered(self):
        # 100 iterations end with 12-16 labels; the four regions are still found: baseline and GSC
        # gave mean IoU 0.73-0.81 and covering 0.68-0.78 on seeds 0 and 1.
        image, truth = data.synthetic_scene(48, 48, seed=0)
        segment_ids, num_segments = train.superpixels(image, _SMALL)
        result = train.segment(image, segment_ids, num_segments, _SMALL, gamma=0.3, top_c=7)
        self.assertGreater(evaluate.hungarian_mean_iou(result.labels, truth), 0.6)
        self.assertGreater(evaluate.segmentation_covering(result.labels, truth), 0.6)

    def test_compare_writes_figures_and_scores(self):
        image, truth = data.synthetic_scene(20, 24)
        workdir = self._tempdir()
        # min_labels=100 > labels at the first iteration: both runs stop after it (stopping rule).
        config = dataclasses.replace(_SMALL, min_labels=100, slic_n_segments=30)
        record = compare.compare("scene", image, truth, config, gamma=0.3, top_c=7, max_side=0,
                                 workdir=workdir)
        for name in ("comparison.png", "labels_per_iteration.png", "results.json"):
            self.assertTrue(os.path.isfile(os.path.join(workdir, "scene", name)), name)
        with open(os.path.join(workdir, "scene", "results.json")) as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(record)))
        for summary in record["runs"].values():
            self.assertBetween(summary["mean_iou"], 0.0, 1.0)
            self.assertLen(summary["n_labels_per_iteration"], 1)


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
        ("L", np.uint8, (5, 6)), ("I;16", np.uint16, (5, 6)), ("RGBA", np.uint8, (5, 6, 4)),
        ("LA", np.uint8, (5, 6, 2)), ("P", np.uint8, (5, 6)))
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
            np.testing.assert_array_equal(rgb, np.broadcast_to(
                values[..., None] if mode == "L" else values[..., :3], (5, 6, 3)))

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
