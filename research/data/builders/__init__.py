"""Offline TFDS builders for data that ships inside installed packages or that we generate.

Importing this package registers them with TFDS.
"""

from research.data.builders.digits import Digits
from research.data.builders.digits_canvas import DigitsCanvas
from research.data.builders.series import Co2, Elnino, Sunspots
from research.data.builders.synthetic_sequences import Adding, CopyMemory
from research.data.builders.xor import Xor

__all__ = ["Adding", "Co2", "CopyMemory", "Digits", "DigitsCanvas", "Elnino", "Sunspots", "Xor"]
