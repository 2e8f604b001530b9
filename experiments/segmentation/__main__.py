"""Kanezaki's unsupervised segmentation with and without GSC: `python -m experiments.segmentation`.

The shared command line (`experiments.common.cli`) with configs/kanezaki.py (the baseline and the
GSC row on one image) as default and runs/segmentation as default workdir. `--help` lists every
field.
"""

import os
import sys

from experiments.common import cli

if __name__ == "__main__":
    if not any(a == "--workdir" or a.startswith("--workdir=") for a in sys.argv[1:]):
        sys.argv.append("--workdir=runs/segmentation")
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "kanezaki.py"))
