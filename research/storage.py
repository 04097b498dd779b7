"""Workdir paths on a local disk or an object store (`gs://bucket/run`), through etils.epath.

A TPU pod's workers share their runs through Cloud Storage, so every workdir path goes through
`workdir_path`: a local path becomes absolute, a URL stays a URL (pathlib would turn
`gs://bucket/run` into a local directory named `gs:`). Object stores differ from disks in ways
the writers care about, each handled here once:
- an object is written whole or not at all, so no temporary file and rename is needed (a rename
  is a copy and a delete there);
- there is no append: `append_lines` on an object rewrites it;
- there are no permissions to test beforehand and no O_EXCL (callers check `is_remote`).
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

from etils import epath

from research.errors import WorkdirError


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object store (`gs://`, `s3://`, ...) rather than a local file."""
    return "://" in os.fspath(path)


def workdir_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: absolute if local, unchanged if a URL (`gs://bucket/run`)."""
    text = os.fspath(path)
    if not is_remote(text):
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if text.startswith("gs://"):
        _require_gcs_client(text)
    return epath.Path(text)


def _require_gcs_client(url: str) -> None:
    """etils reads gs:// through gcsfs when TensorFlow is absent: name the missing package."""
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise WorkdirError(
                f"{url}: reading and writing gs:// needs gcsfs; pip install -e '.[gcs]'"
            ) from None


def write_bytes(path: epath.Path, data: bytes) -> None:
    """Writes `path` atomically: a reader (or a kill) sees the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):  # an object upload is atomic already
        path.write_bytes(data)
        return
    fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    except BaseException:
        epath.Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: epath.Path, text: str) -> None:
    """`write_bytes` for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def move(source: epath.Path, target: epath.Path) -> None:
    """Renames a file or directory (on an object store: copies, then deletes)."""
    if is_remote(source):
        source.rename(target)
    else:
        os.replace(os.fspath(source), os.fspath(target))


def save_figure(fig: Any, path: epath.Path, **savefig_kwargs: Any) -> epath.Path:
    """Saves a matplotlib figure to `path` (local or remote; the format from its suffix)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    write_bytes(path, buffer.getvalue())
    return path
