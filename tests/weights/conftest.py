"""Fixtures of the weights/control tests (helpers live in weights_util.py)."""

from weights_util import transport  # noqa: F401  (re-exported fixture)
