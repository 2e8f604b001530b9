"""On-device preprocessing and augmentation, pure functions of (key, images)."""

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
    """uint8 [B, H, W, C] -> (x / 255 - mean) / std in `dtype`; mean, std have C entries."""
    x = images.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """RandomCrop(H, padding=pad) with zero padding, then RandomHorizontalFlip(0.5).

    The CIFAR protocol of Lee et al. (2015, "Deeply-Supervised Nets"). As in torchvision, call it
    on the uint8 images before `normalize`, so padded pixels are black (0) before normalisation.

    Args:
      key: PRNG key.
      images: [B, H, W, C], any dtype.
      pad: padding in pixels on each side.

    Returns:
      [B, H, W, C] augmented images, same dtype.
    """
    b, h, w, c = images.shape
    kx, ky, kf = jax.random.split(key, 3)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = jax.random.randint(ky, (b,), 0, 2 * pad + 1)
    dx = jax.random.randint(kx, (b,), 0, 2 * pad + 1)
    crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
        padded, dy, dx
    )
    flip = jax.random.bernoulli(kf, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)
