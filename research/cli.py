"""What the launch/ scripts share around their own flags: an argparse whose errors are user
errors, and the run of a command that prints a markdown table (bench.py, bench_recurrent.py).

The scripts define and parse their flags; this module only shapes how they fail and print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from research.errors import EXIT_OK, EXIT_USER_ERROR, UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UserError (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"bad command line: {message}")


def run_table_command(
    parse: Callable[[list[str]], Any], produce: Callable[[Any], list[str]], argv: list[str]
) -> int:
    """Parses `argv`, prints the lines `produce(args)` returns and writes them to `args.out` when
    set; a user error is one line on stderr and its exit code (2)."""
    try:
        args = parse(argv)
        lines = produce(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return EXIT_OK
