"""Sphinx configuration: `python -m sphinx -W --keep-going -b html docs docs/_build/html`.

The API reference is generated from the docstrings (autodoc, autosummary, napoleon for the
Google-style ``Args:`` sections); the pages are MyST markdown; the notebooks of ``colab/`` are
copied in and rendered as saved, never executed. No extension fetches anything over the network.
"""

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import gsc_jax

project = "gsc-jax"
author = "gsc-jax authors"
copyright = "gsc-jax authors"
version = release = gsc_jax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "figures/*.md"]

# `name` in a docstring links to the object when Sphinx knows it, else shows as code.
default_role = "py:obj"

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": True}
# The Args sections give shapes and types; annotations would expand jax.typing.ArrayLike into
# a union of every array-like type.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 4
# Notebooks are rendered with the outputs they were saved with.
nb_execution_mode = "off"

html_theme = "sphinx_book_theme"
html_title = f"gsc-jax {release}"
html_theme_options = {"show_toc_level": 2}


def _copy_notebooks() -> None:
    """colab/*.ipynb into docs/notebooks/ (git-ignored): Sphinx reads sources under docs/ only."""
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    for notebook in sorted((ROOT / "colab").glob("*.ipynb")):
        copy = target / notebook.name
        if not copy.exists() or copy.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, copy)


_copy_notebooks()
