"""Benchmarks of gsc_jax: loss overhead over cross-entropy and a training-step figure.

python -m benchmarks.loss_overhead
python -m benchmarks.train_step
"""
