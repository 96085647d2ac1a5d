"""The ``Examples:`` in the docstrings of the public kernels run and print what they say."""

import doctest

import pytest

import fastpg.footprint
import fastpg.loss
import fastpg.returns
import fastpg.rollout


@pytest.mark.parametrize(
    "module", [fastpg.returns, fastpg.loss, fastpg.rollout, fastpg.footprint], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
