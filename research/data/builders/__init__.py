"""Offline TFDS builders for data that ships inside installed packages or that we generate.

Importing this package registers them with TFDS.
"""

from research.data.builders.digits import Digits
from research.data.builders.digits_canvas import DigitsCanvas
from research.data.builders.xor import Xor

__all__ = ["Digits", "DigitsCanvas", "Xor"]
