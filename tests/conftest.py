"""Fixtures shared by the test modules."""

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compile():
    """Tiny models: compile time dominates, so skip most XLA optimisations in the module.

    Use as ``pytestmark = pytest.mark.usefixtures("fast_compile")``.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
