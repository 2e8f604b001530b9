"""Offline quickstart (digits, nothing downloaded): `python -m experiments.quickstart`.

The shared command line (`experiments.common.cli`) with configs/default.py (six losses x three
seeds) as default config and runs/quickstart as default workdir; configs/all_losses.py compares
every base loss without and with GSC. `--help` lists every field.
"""

import os
import sys

from experiments.common import cli

if __name__ == "__main__":
    if not any(a == "--workdir" or a.startswith("--workdir=") for a in sys.argv[1:]):
        sys.argv.append("--workdir=runs/quickstart")
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"))
