"""Users' own images: `data.name = "folder:ROOT"` reads ROOT/<split>/<class>/<image file>.

Each split folder holds one subfolder per class; the class names, sorted, give the label ids
(the same for every split). Images are decoded with PIL as uint8 RGB on access, so folders of
any size work without preparation; `data.image_size` resizes them to one shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from research.errors import DataError

PREFIX = "folder:"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def is_folder(name: str) -> bool:
    """Whether a dataset name points at a folder of class subfolders."""
    return name.startswith(PREFIX)


def _root(name: str) -> Path:
    root = Path(os.path.expanduser(name[len(PREFIX) :]))
    if not root.is_dir():
        raise DataError(f"data.name {name!r}: {root} is not a directory of split folders")
    return root


def classes(name: str) -> list[str]:
    """Sorted class names over every split of the folder dataset."""
    root = _root(name)
    found = {c.name for split in root.iterdir() if split.is_dir() for c in split.iterdir()}
    if not found:
        raise DataError(f"{root} has no ROOT/<split>/<class>/ folders")
    return sorted(found)


def split_sizes(name: str) -> dict[str, int]:
    """split -> number of images."""
    root = _root(name)
    return {s.name: len(_files(s)) for s in sorted(root.iterdir()) if s.is_dir()}


def _files(split_dir: Path) -> list[Path]:
    return sorted(
        p
        for c in split_dir.iterdir()
        if c.is_dir()
        for p in c.iterdir()
        if p.suffix.lower() in EXTENSIONS
    )


class FolderSource:
    """Random access to one split's images as {"image": uint8 HxWx3, "label": int64}."""

    def __init__(self, name: str, split: str):
        root = _root(name)
        if not (root / split).is_dir():
            available = ", ".join(split_sizes(name))
            raise DataError(f"folder dataset {root} has no split {split!r}; splits: {available}")
        ids = {c: i for i, c in enumerate(classes(name))}
        self._files = _files(root / split)
        self._labels = np.asarray([ids[p.parent.name] for p in self._files], np.int64)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self._files[index]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), np.uint8)
        except OSError as e:
            raise DataError(f"cannot decode image {path}: {e}") from None
        return {"image": pixels, "label": self._labels[index]}
