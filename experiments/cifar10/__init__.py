"""CIFAR-10 experiments of the GSC paper (Tables 1-2, Fig. 5): `python -m experiments.cifar10`."""
