"""Experiments for gsc-jax: the offline quickstart and the CIFAR-10 paper experiments."""
