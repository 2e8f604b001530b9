"""CIFAR-10 experiments of the GSC paper: `python -m experiments.cifar10 --workdir W [...]`.

The shared command line (`experiments.common.cli`) with the AlexNet config as default; other
configs: experiments/cifar10/configs/{convmixer,table1,table2,sweep}.py. `--help` lists every
field.
"""

import os

from experiments.common import cli

if __name__ == "__main__":
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "alexnet.py"))
