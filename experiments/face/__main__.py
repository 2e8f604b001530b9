"""Face recognition with ArcFace / CosFace (+ GSC): `python -m experiments.face --workdir W`.

The shared command line (`experiments.common.cli`) with the ArcFace CASIA recipe as default; the
table: --config experiments/face/configs/table5.py. `--help` lists every field.
"""

import os

from experiments.common import cli

if __name__ == "__main__":
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "arcface.py"))
