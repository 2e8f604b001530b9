"""Shared training harness: data, augmentation, losses, sharding, steps, checkpoints, reports."""
