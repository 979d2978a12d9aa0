"""The conversion's errors: bad input the user can fix (the message says how)."""

from __future__ import annotations


class ConvertError(ValueError):
    """Bad input to the converter: the message says what to change."""


class UnsupportedModelError(ConvertError):
    """A Hugging Face model this converter cannot represent exactly."""
