"""Interleaved timing: every framework's step runs in each round, so a slow spell of a shared
machine hits all of them alike, and the ratios are taken round by round."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds per step of each framework in each round (`per_round[name][r]`)."""

    per_round: dict[str, list[float]]

    def median(self, name: str) -> float:
        """Median over rounds of `name`'s seconds per step."""
        return statistics.median(self.per_round[name])

    def best(self, name: str) -> float:
        """Fastest round of `name` (the least disturbed by the rest of the machine)."""
        return min(self.per_round[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per round: `baseline`'s time over `name`'s (> 1: `name` is faster)."""
        return [b / t for t, b in zip(self.per_round[name], self.per_round[baseline], strict=True)]


def interleave(
    steps: Mapping[str, Callable[[], None]], *, rounds: int, steps_per_round: int
) -> Timings:
    """Runs each step `steps_per_round` times per round, the steps in turn, for `rounds` rounds
    (the order rotates every round so that none always follows the same neighbour); each round's
    time is divided by `steps_per_round`. The steps should already be warm (compiled)."""
    if rounds < 1 or steps_per_round < 1:
        raise ValueError(
            f"rounds and steps_per_round must be >= 1, got {rounds}, {steps_per_round}"
        )
    names = list(steps)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run = steps[name]
            start = time.perf_counter()
            for _ in range(steps_per_round):
                run()
            per_round[name].append((time.perf_counter() - start) / steps_per_round)
    return Timings(per_round)
