"""Shared experiment layer: data, augmentation, losses, layers, sharding, steps, evaluation,
checkpoints, the epoch loop and reports."""
