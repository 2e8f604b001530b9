"""ImageNet-scale experiments of the GSC paper: `python -m experiments.imagenet --workdir W`.

The shared command line (`experiments.common.cli`) with the pycls ResNet-50 recipe as default;
other configs: experiments/imagenet/configs/{ols_flowers,table3,table4}.py. `--help` lists every
field.
"""

import os

from experiments.common import cli

if __name__ == "__main__":
    cli.main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pycls.py"))
