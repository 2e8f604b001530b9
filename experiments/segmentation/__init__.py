"""Unsupervised segmentation (Kanezaki 2018) with the GSC term.

Run it with `python -m experiments.segmentation`; see `__main__.py`.
"""
