"""Offline TFDS builders for data that ships inside installed packages; importing registers them."""

from research.data.builders.digits import Digits

__all__ = ["Digits"]
