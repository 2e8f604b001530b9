"""FER2013 experiment of the GSC paper (Table 6, Fig. 7): `python -m experiments.fer2013`."""
