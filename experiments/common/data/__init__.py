"""Data for the shared loop: the `Source` contract and its two kinds of source.

- `source`: the contract (`Source`, `DataError`);
- `memory`: datasets held as uint8 arrays (image folders, TFDS, digits) and `ArraySource`;
- `stream`: tf.data streaming of image folders and TFDS (`StreamSource`, `Catalogue`);
- `folders`: listing DIR/<class>/<image> trees, one way for every loader.
"""

from experiments.common.data.source import DataError
from experiments.common.data.source import Source

__all__ = ["DataError", "Source"]
