"""The public API: `legend.__all__` names what a user needs; each name resolves, and each public function documents
its arguments and return value and carries an example that the suite runs as a doctest."""

from __future__ import annotations

import inspect

import pytest

import legend

FUNCTIONS = [name for name in legend.__all__ if name != "__version__" and inspect.isfunction(getattr(legend, name))]


def test_every_public_name_resolves_and_nothing_else_is_promised():
    assert legend.__version__
    for name in legend.__all__:
        assert getattr(legend, name) is not None
    assert sorted(dir(legend)) == sorted(legend.__all__)
    with pytest.raises(AttributeError):
        legend.not_a_name  # noqa: B018


def test_the_api_is_the_size_a_user_can_hold():
    assert 20 <= len(legend.__all__) <= 35


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_public_function_documents_its_arguments_and_has_an_example(name):
    doc = inspect.getdoc(getattr(legend, name)) or ""
    assert "Args:" in doc and "Returns:" in doc, name
    assert ">>>" in doc, name
