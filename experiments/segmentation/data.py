"""Images for the segmentation experiment: files, scikit-image samples, a synthetic scene."""

import logging
import os

import PIL.Image
import numpy as np
import skimage.data
import skimage.transform

# PIL modes that hold one grey channel (8-bit, 1-bit, 32-bit int, 16-bit int, 32-bit float).
_GRAY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _open(path: str) -> PIL.Image.Image:
    """Opens and decodes `path` with PIL; clear errors for a missing file or a non-image."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path!r}")
    try:
        image = PIL.Image.open(path)
        image.load()
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Not a readable image file: {path!r} ({error})") from error
    return image


def _gray_to_uint8(image: PIL.Image.Image) -> np.ndarray:
    """[H, W] uint8 from a grey PIL image of any depth (wider types rescaled by their maximum)."""
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    values = np.asarray(image, dtype=np.float64)
    peak = values.max()
    return np.round(values * (255.0 / peak if peak > 0 else 1.0)).clip(0, 255).astype(np.uint8)


def load_image(path: str) -> np.ndarray:
    """Reads an image file as ``[H, W, 3]`` uint8 RGB.

    Grey images are replicated to three channels (16-bit and float ones rescaled to 8 bits first);
    images with alpha have it dropped; palette and other modes are converted by PIL. Each conversion
    is logged.

    Raises:
      FileNotFoundError: `path` is not a file.
      ValueError: the file is not an image PIL can decode.
    """
    image = _open(path)
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _GRAY_MODES:
        logging.info("%s: grayscale (mode %s) image converted to RGB.", path, mode)
        return np.repeat(_gray_to_uint8(image)[..., None], 3, axis=-1)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        logging.info("%s: %s image converted to RGB (alpha channel dropped).", path, mode)
        return np.asarray(image.convert("RGBA").convert("RGB"))
    logging.info("%s: %s image converted to RGB.", path, mode)
    return np.asarray(image.convert("RGB"))


def relabel(labels: np.ndarray) -> np.ndarray:
    """Maps region ids ``[H, W]`` or region colours ``[H, W, C]`` to ids 0..R-1, ``[H, W]``."""
    flat = labels.reshape(labels.shape[0] * labels.shape[1], -1)
    _, ids = np.unique(flat, axis=0, return_inverse=True)
    return ids.reshape(labels.shape[:2]).astype(np.int32)


def load_ground_truth(path: str) -> np.ndarray:
    """Reads ground-truth regions (``.npy`` ids, or an image of ids or colours) as ids ``[H, W]``.

    Every distinct value (or colour) is one region. Raises like `load_image`.
    """
    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Ground-truth file not found: {path!r}")
        labels = np.load(path)
    else:
        labels = np.asarray(_open(path))
    if labels.ndim not in (2, 3):
        raise ValueError(f"Ground truth {path!r} must be [H, W] or [H, W, C], got {labels.shape}.")
    return relabel(labels)


def skimage_image(name: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB sample image shipped with scikit-image (``skimage.data.<name>``)."""
    loader = getattr(skimage.data, name, None)
    if loader is None or not callable(loader):
        raise ValueError(f"skimage.data has no image called {name!r}.")
    image = np.asarray(loader())
    if image.ndim == 2:
        logging.info("skimage.data.%s: grayscale image converted to RGB.", name)
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.shape[-1] == 4:
        logging.info("skimage.data.%s: RGBA image converted to RGB (alpha channel dropped).", name)
        image = image[..., :3]
    return image.astype(np.uint8)


def synthetic_scene(height: int, width: int, *, noise: float = 12.0, seed: int = 0):
    """A flat-colour scene with known regions: two background bands, a disk and a rectangle.

    Region ids: 0 upper band (blue), 1 lower band (green), 2 rectangle (yellow), 3 disk (red);
    Gaussian pixel noise of std `noise` (in 0..255 units) is added to the colours.

    Returns:
      ``(image [H, W, 3] uint8, regions [H, W] int32)``.
    """
    rows, cols = np.mgrid[:height, :width]
    regions = np.where(rows < 0.45 * height, 0, 1)
    regions[(np.abs(rows - 0.7 * height) < 0.18 * height) & (cols > 0.55 * width)] = 2
    radius = 0.22 * min(height, width)
    regions[(rows - 0.4 * height) ** 2 + (cols - 0.3 * width) ** 2 < radius**2] = 3
    colours = np.array([[70, 110, 200], [60, 150, 60], [230, 200, 40], [200, 40, 40]], np.float64)
    image = colours[regions] + np.random.default_rng(seed).normal(0.0, noise, (height, width, 3))
    return np.round(image).clip(0, 255).astype(np.uint8), regions.astype(np.int32)


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Resizes ``[H, W, 3]`` uint8 so that max(H, W) <= `max_side` (anti-aliased); 0 keeps it."""
    scale = max_side / max(image.shape[:2])
    if max_side <= 0 or scale >= 1:
        return image
    shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    resized = skimage.transform.resize(image, shape, anti_aliasing=True, preserve_range=True)
    return np.round(resized).clip(0, 255).astype(np.uint8)


def upscale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map ``[h, w]`` to `shape` ``(H, W)``."""
    if labels.shape == tuple(shape):
        return labels
    rows = ((np.arange(shape[0]) + 0.5) * (labels.shape[0] / shape[0])).astype(np.int64)
    cols = ((np.arange(shape[1]) + 0.5) * (labels.shape[1] / shape[1])).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]
