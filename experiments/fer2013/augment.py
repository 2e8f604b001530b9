"""FER2013 augmentation of Khairuddin & Chen (2021) on the device: pure functions of (key, images).

The reference pipeline (usef-kh/fer, data/fer2013.py), per 48x48 face:
  train: RandomResizedCrop(48, scale=(0.8, 1.2)) -> RandomApply(RandomAffine(translate=0.2), 0.5)
         -> RandomHorizontalFlip -> RandomApply(RandomRotation(10), 0.5) -> TenCrop(40)
         -> RandomErasing(p=0.5) on every crop; the ten crops train as ten samples of one label.
  eval:  TenCrop(40); the model's logits are averaged over the ten crops.
Pixels stay in 0..255 here (float32); the loop's normalisation divides by 255 (the reference's
Normalize(mean=0, std=255)), so erased pixels are 0 before and after it.

Images are [B, H, W, C]; views are [B, V, S, S, C] with V crops of side S per image.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

NUM_TEN_CROPS = 10


def five_crop_offsets(size: int, crop: int) -> tuple:
    """(top, left) of torchvision's five_crop: corners tl, tr, bl, br, then the centre."""
    far = size - crop
    centre = int(round(far / 2.0))
    return ((0, 0), (0, far), (far, 0), (far, far), (centre, centre))


def ten_crop(images: jax.Array, crop: int) -> jax.Array:
    """torchvision TenCrop(crop): the five crops of the image, then the five of its mirror image.

    Args:
      images: [B, H, H, C] square images, H >= crop.
      crop: side of the crops.

    Returns:
      [B, 10, crop, crop, C], in torchvision's order (tl, tr, bl, br, centre, then the same five of
      the horizontally flipped image).
    """
    size = images.shape[1]
    if images.shape[2] != size or not 0 < crop <= size:
        raise ValueError(
            f"ten_crop needs square images of side >= crop={crop}, got {images.shape[1:3]}."
        )
    offsets = five_crop_offsets(size, crop)
    views = [
        im[:, top : top + crop, left : left + crop]
        for im in (images, images[:, :, ::-1])
        for top, left in offsets
    ]
    return jnp.stack(views, axis=1)


def _uniform(key, shape, low, high):
    return jax.random.uniform(key, shape, jnp.float32, low, high)


def random_resized_crop_box(
    key: jax.Array, size: int, scale=(0.8, 1.2), ratio=(3.0 / 4.0, 4.0 / 3.0), attempts: int = 10
) -> jax.Array:
    """torchvision RandomResizedCrop.get_params for a square `size` image: float32 [4] (i, j, h, w).

    Up to ten (area, log-aspect) draws; the first whose box fits in the image is taken at a uniform
    position, and when none fits the whole image is used (the fallback for a square image).
    """
    k_area, k_ratio, k_i, k_j = jax.random.split(key, 4)
    area = size * size * _uniform(k_area, (attempts,), *scale)
    aspect = jnp.exp(_uniform(k_ratio, (attempts,), math.log(ratio[0]), math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(area * aspect))
    h = jnp.round(jnp.sqrt(area / aspect))
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = jnp.argmax(fits)
    h = jnp.where(fits.any(), h[first], size)
    w = jnp.where(fits.any(), w[first], size)
    i = jnp.floor(jax.random.uniform(k_i) * (size - h + 1))
    j = jnp.floor(jax.random.uniform(k_j) * (size - w + 1))
    return jnp.stack([i, j, h, w])


def _warp_one(
    key: jax.Array, image: jax.Array, scale: tuple, ratio: tuple, translate: float, degrees: float
) -> jax.Array:
    """The geometric part of the train pipeline for one [H, H, C] image, as one resampling.

    Output pixel (y, x) is traced back through the inverse of each step: rotation about the centre
    (applied with probability 1/2), horizontal flip (1/2), integer translation (1/2), and the
    resized crop box. Pixels that the rotation or translation brings in from outside the frame are
    0 (torchvision's fill). The source image is sampled once, bilinearly (edge pixels clamped),
    where the reference resamples after the crop (bilinear) and after the affine and rotation steps
    (nearest).
    """
    size = image.shape[0]
    k_box, k_tr_on, k_tr, k_flip, k_rot_on, k_rot = jax.random.split(key, 6)
    i, j, h, w = random_resized_crop_box(k_box, size, scale, ratio)
    max_shift = translate * size
    shift = jnp.round(_uniform(k_tr, (2,), -max_shift, max_shift))
    shift = jnp.where(jax.random.bernoulli(k_tr_on, 0.5), shift, 0.0)
    flip = jax.random.bernoulli(k_flip, 0.5)
    angle = jnp.deg2rad(_uniform(k_rot, (), -degrees, degrees))
    angle = jnp.where(jax.random.bernoulli(k_rot_on, 0.5), angle, 0.0)

    y, x = jnp.meshgrid(
        jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32), indexing="ij"
    )
    c = (size - 1) / 2.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    y, x = c + cos * (y - c) - sin * (x - c), c + sin * (y - c) + cos * (x - c)
    inside = (y > -0.5) & (y < size - 0.5) & (x > -0.5) & (x < size - 0.5)
    x = jnp.where(flip, size - 1 - x, x)
    y, x = y - shift[0], x - shift[1]
    inside &= (y > -0.5) & (y < size - 0.5) & (x > -0.5) & (x < size - 0.5)
    src_y = i + (y + 0.5) * h / size - 0.5
    src_x = j + (x + 0.5) * w / size - 0.5
    channels = [
        ndimage.map_coordinates(image[..., ch], [src_y, src_x], order=1, mode="nearest")
        for ch in range(image.shape[-1])
    ]
    return jnp.where(inside[..., None], jnp.stack(channels, -1), 0.0)


def random_geometry(
    key: jax.Array,
    images: jax.Array,
    *,
    scale=(0.8, 1.2),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    translate: float = 0.2,
    degrees: float = 10.0,
) -> jax.Array:
    """The train pipeline's geometric steps on uint8 [B, H, H, C]; returns float32 [B, H, H, C].

    RandomResizedCrop(H, scale, ratio), RandomApply(RandomAffine(translate), 0.5),
    RandomHorizontalFlip, RandomApply(RandomRotation(degrees), 0.5); see `_warp_one`.
    """
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, im: _warp_one(k, im, scale, ratio, translate, degrees))(
        keys, images.astype(jnp.float32)
    )


def random_erasing(
    key: jax.Array,
    views: jax.Array,
    p: float = 0.5,
    scale=(0.02, 0.33),
    ratio=(0.3, 3.3),
    attempts: int = 10,
) -> jax.Array:
    """torchvision RandomErasing(p, scale, ratio, value=0) applied to every view independently.

    With probability p, up to ten (area, log-aspect) draws; the first rectangle strictly smaller
    than the view in both sides is set to 0 at a uniform position (no erasing when none fits).

    Args:
      key: PRNG key.
      views: [..., S, S, C].

    Returns:
      `views` with the rectangles zeroed, same shape and dtype.
    """
    lead, (s_h, s_w) = views.shape[:-3], views.shape[-3:-1]
    n = math.prod(lead)
    k_on, k_area, k_ratio, k_i, k_j = jax.random.split(key, 5)
    area = s_h * s_w * _uniform(k_area, (n, attempts), *scale)
    aspect = jnp.exp(_uniform(k_ratio, (n, attempts), math.log(ratio[0]), math.log(ratio[1])))
    h = jnp.round(jnp.sqrt(area * aspect))
    w = jnp.round(jnp.sqrt(area / aspect))
    fits = (h < s_h) & (w < s_w)
    first = jnp.argmax(fits, axis=1)
    h = jnp.take_along_axis(h, first[:, None], 1)[:, 0]
    w = jnp.take_along_axis(w, first[:, None], 1)[:, 0]
    on = jax.random.bernoulli(k_on, p, (n,)) & fits.any(axis=1)
    top = jnp.floor(jax.random.uniform(k_i, (n,)) * (s_h - h + 1))
    left = jnp.floor(jax.random.uniform(k_j, (n,)) * (s_w - w + 1))
    rows = jnp.arange(s_h, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(s_w, dtype=jnp.float32)[None, None, :]
    box = (
        (rows >= top[:, None, None])
        & (rows < (top + h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + w)[:, None, None])
        & on[:, None, None]
    )
    box = box.reshape(*lead, s_h, s_w, 1)
    return jnp.where(box, jnp.zeros((), views.dtype), views)


def train_views(
    key: jax.Array, images: jax.Array, *, crop: int = 40, num_crops: int = NUM_TEN_CROPS
) -> jax.Array:
    """The training views of a batch: geometry, TenCrop(crop), random erasing per crop.

    Args:
      key: PRNG key (the loop passes fold_in(aug_key, step)).
      images: uint8 [B, H, H, C].
      crop: crop side (40 in the reference).
      num_crops: 10 (the reference: all ten crops, each a training sample) or 1 (one of the ten,
        drawn uniformly per image: a tenth of the reference's work per image).

    Returns:
      float32 [B, num_crops, crop, crop, C], pixel values in 0..255.
    """
    if num_crops not in (1, NUM_TEN_CROPS):
        raise ValueError(f"num_crops must be 1 or {NUM_TEN_CROPS}, got {num_crops}.")
    k_geo, k_pick, k_erase = jax.random.split(key, 3)
    views = ten_crop(random_geometry(k_geo, images), crop)
    if num_crops == 1:
        pick = jax.random.randint(k_pick, (images.shape[0],), 0, NUM_TEN_CROPS)
        views = jnp.take_along_axis(views, pick[:, None, None, None, None], axis=1)
    return random_erasing(k_erase, views)


def eval_views(images: jax.Array, *, crop: int = 40) -> jax.Array:
    """TenCrop(crop) of uint8 [B, H, H, C] as float32 [B, 10, crop, crop, C] (0..255)."""
    return ten_crop(images.astype(jnp.float32), crop)
