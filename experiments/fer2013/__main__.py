"""FER2013 experiments of the GSC paper (Table 6): `python -m experiments.fer2013 --workdir W`.

The shared command line (`experiments.common.cli`) with the VGG recipe as default; the table:
--config experiments/fer2013/configs/table6.py. `--help` lists every field.
"""

import os

from experiments.common import cli

if __name__ == "__main__":
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "vgg.py"))
