"""The random keys of a run, derived from its seed in one place.

Every random choice of a run is a pure function of (seed, step): the loop, the in-memory data
source and the population runs all take their keys from `keys`, so that a member of a population
(several seeds trained together with `jax.vmap`) is the single run of its seed.
"""

import jax

# fold_in(key(seed), i) for each use.
_STREAMS = ("init", "shuffle", "augment", "dropout")


def keys(seed: int) -> dict:
    """{'init', 'shuffle', 'augment', 'dropout'} keys of `seed`: fold_in(key(seed), 0..3)."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(_STREAMS)}
