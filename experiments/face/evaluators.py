"""Face verification as an evaluator of the shared loop (the adapter over `verification`).

`config.evals.verification = {'type': 'experiments.face.evaluators.Verification', 'sets': (paths
of .bin files or pairs.txt folders), 'val_dir': a folder searched for the six Table 5 .bin
files, 'num_folds': 10}`. Each epoch it embeds every pair set with the model's embedding (flip
test) and runs the 10-fold protocol; it yields '<set>/accuracy', '<set>/accuracy_std' and
'<set>/tar_at_far' (TAR at FAR 1e-3), logged as 'verification/<set>/...'. The final state's
ROC curves and full results go to roc.png and verification.json.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import augment
from experiments.common import parallel
from experiments.common import report
from experiments.face import data
from experiments.face import models
from experiments.face import verification


class Verification:
    """The verification protocol over the pair sets its options name (see the module)."""

    def __init__(self, name: str, options, context):
        self.name, self.context = name, context
        config = context.config
        found = data.find_verification_sets(
            tuple(options.get("sets", ())), options.get("val_dir") or None
        )
        if not found:
            raise ValueError(
                f"config.evals.{name}: no verification set found; give 'sets' "
                "(.bin files or pairs.txt folders) or a 'val_dir' holding lfw.bin, "
                f"... ({', '.join(data.TABLE5_SETS)})."
            )
        self.num_folds = int(options.get("num_folds", 10))
        if self.num_folds < 2:
            raise ValueError(
                f"config.evals.{name}.num_folds must be at least 2, got {self.num_folds}."
            )
        self.sets = [
            data.load_verification_set(n, p, config.data.image_size) for n, p in found.items()
        ]
        mesh, model = context.mesh, context.model
        dtype = jnp.bfloat16 if config.bf16 else jnp.float32
        self._batch_sharded = parallel.batch_sharded(mesh)
        replicated = parallel.replicated(mesh)

        @jax.jit
        def embed(state, images):
            x = augment.normalize(images, config.data.mean, config.data.std, dtype)
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            out = model.apply(variables, x, train=False, method=models.FaceModel.embed)
            return jax.lax.with_sharding_constraint(out, replicated)

        self._embed = embed

    def results(self, state) -> dict:
        """{set name: `verification.evaluate` result} of the state."""

        def embed_fn(images):
            global_images = jax.make_array_from_callback(
                images.shape, self._batch_sharded, lambda index: images[index]
            )
            return np.asarray(jax.device_get(self._embed(state, global_images)))

        return {
            s.name: verification.evaluate(
                verification.embed_pairs(
                    embed_fn, s.images, batch_size=self.context.eval_batch_size
                ),
                s.issame,
                num_folds=self.num_folds,
            )
            for s in self.sets
        }

    def run(self, state) -> tuple:
        results = self.results(state)
        scalars = {}
        for set_name, r in results.items():
            scalars.update(
                {
                    f"{set_name}/accuracy": float(r["accuracy"]),
                    f"{set_name}/accuracy_std": float(r["accuracy_std"]),
                    f"{set_name}/tar_at_far": float(r["tar"]),
                }
            )
        self._latest = results
        return scalars, {"pairs": {s.name: int(len(s.issame)) for s in self.sets}}

    def write(self, scalars, details, workdir: str, title: str) -> None:
        """verification.json and roc.png of the latest evaluated state (the final one)."""
        del scalars, details
        report.write_json(os.path.join(workdir, "verification.json"), self._latest)
        verification.plot_roc(self._latest, os.path.join(workdir, "roc.png"), title=title)
