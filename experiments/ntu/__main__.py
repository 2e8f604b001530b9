"""NTU RGB+D action recognition (GSC paper Table 7): `python -m experiments.ntu --workdir W
--config.data.store STORE`.

The shared command line (`experiments.common.cli`) with the ResNet3D-34 recipe as default
(configs/resnet3d.py); the table: --config experiments/ntu/configs/table7.py. Prepare the store
first: `python -m experiments.ntu.prepare --videos DIR --store STORE`. `--help` lists every field.
"""

import os

from experiments.common import cli

if __name__ == "__main__":
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "resnet3d.py"))
