"""`Report`: the extension a model family's end-of-run reporting subclasses.

A report chooses its runs (`applies`), may refuse a config it cannot honour (`check`) and adds
summary entries on every process (`summary`); at the end of a run, on process 0, it writes its
figures and files into the run's plots/ (`write`). `finish` is the same for every family: the
shared inputs in, the figures that could be drawn and the summary entries out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etils import epath

from research.train.extension import Extension, RunEnd


class Report(Extension):
    """End-of-run reporting of one family; subclasses supply `applies` and `write`."""

    def write(self, end: RunEnd) -> tuple[list[Path | None], dict[str, Any]]:
        """(figures written into `end.directory`, None where one could not be drawn; summary
        entries) for the final state; figures only with `end.plots`."""
        raise NotImplementedError

    def finish(self, end: RunEnd) -> tuple[list[epath.Path], dict[str, Any]]:
        """The figures `write` drew (the ones it could) and its summary entries."""
        drawn, entries = self.write(end)
        return [f for f in drawn if f is not None], entries
