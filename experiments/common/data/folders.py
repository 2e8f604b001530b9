"""Listing image folders: DIR/<class>/<image> and DIR/<identity>/<image>, one way for every loader.

Names are taken literally (no glob patterns: a class folder `a[1]` is its own class), hidden
entries (names starting with '.', e.g. `.ipynb_checkpoints`, `.DS_Store`) are skipped, plain files
beside the class folders (`LOC_val_solution.csv`) are ignored, and a class folder without images
is an error that names it, so that no label is silently shifted or left empty.
"""

import os

from experiments.common.data.source import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _visible(entries):
    return [e for e in entries if not e.name.startswith(".")]


def class_folders(split_dir: str) -> tuple:
    """The sorted names of the visible sub-folders of `split_dir`."""
    with os.scandir(split_dir) as entries:
        return tuple(sorted(e.name for e in _visible(entries) if e.is_dir()))


def image_files(folder: str, suffixes=IMAGE_SUFFIXES) -> list:
    """Sorted paths of the visible files of `folder` whose suffix (any case) is in `suffixes`."""
    with os.scandir(folder) as entries:
        return sorted(
            e.path for e in _visible(entries) if e.is_file() and e.name.lower().endswith(suffixes)
        )


def list_classes(
    split_dir: str,
    *,
    layout: str,
    class_names: tuple | None = None,
    suffixes=IMAGE_SUFFIXES,
    allow_empty: bool = False,
) -> dict:
    """{class name: sorted image paths} of the layout `split_dir`/<class>/<image>.

    Args:
      split_dir: the folder holding one sub-folder per class.
      layout: the expected layout, quoted in error messages.
      class_names: the classes another split defined (train's): `split_dir` must hold exactly
        these folders; None takes its own sub-folders in sorted order.
      suffixes: image file suffixes (lower case).
      allow_empty: accept class folders without images (identities with held-out images only).

    Raises:
      DataError: a missing folder, no class folders, folders that differ from `class_names`, or
        (unless `allow_empty`) a class folder without images, naming them.
    """
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir!r} is not a folder; {layout}.")
    found = class_folders(split_dir)
    if not found:
        raise DataError(f"{split_dir!r} has no class folders; {layout}.")
    if class_names is not None and tuple(found) != tuple(class_names):
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise DataError(
            f"the class folders of {split_dir!r} differ from the training split's: "
            f"missing {missing[:5]}, extra {extra[:5]}; {layout}."
        )
    listing = {name: image_files(os.path.join(split_dir, name), suffixes) for name in found}
    empty = [name for name, paths in listing.items() if not paths]
    if empty and not allow_empty:
        raise DataError(
            f"class folders without images ({', '.join(suffixes)}) in "
            f"{split_dir!r}: {empty[:5]}; add images or remove those folders."
        )
    return listing
