"""Training-step time of the recurrent models against the sequence length T.

    python launch/bench_recurrent.py --cells=rnn,lstm,gru --lengths=100,200,400,800 \\
        --batch_size=32 --hidden=128 --features=1 --repeats=10 [--out=FILE.md]

For each cell and length: RecurrentNet(cell, hidden_sizes=(hidden,), num_outputs=1) and one
jitted Adam(1e-3) step on the MSE to random targets (parameters and optimizer state donated);
compiled and run twice untimed, then `repeats` steps are timed (each waits for its results) and
the median is reported. A scan does the same work at every step, so the time should be linear in
T: ms/step divided by T roughly constant. The last column, ms per 100 steps of T at the longest
length over the same at the shortest, is then near 1; well above 1 is worse than linear, below 1
means fixed per-step costs (launch, optimizer update, head) dominate at short lengths. Prints a
markdown table (also written to --out) and a line naming the device, jax version, batch and
hidden size; times on a shared machine are indicative. Exit codes: 0 done; 2 user error.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from research.cli import Parser, run_table_command
from research.errors import ConfigError

WARMUP_STEPS = 2  # after compilation: the first runs may still allocate and autotune


def _int_list(text: str) -> list[int]:
    """'100,200' -> [100, 200]; every value a positive integer."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated int list") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' needs positive integers")
    return values


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cells")
    parser.add_argument("--lengths", type=_int_list, default=[100, 200, 400, 800])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128, help="units of the one layer")
    parser.add_argument("--features", type=int, default=1, help="input features per step")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps (median taken)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    for key in ("batch_size", "hidden", "features", "repeats"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be a positive integer, got {getattr(args, key)}")
    args.cells = [c for c in args.cells.split(",") if c]
    from research.models.recurrent import CELLS  # noqa: PLC0415 (jax loads after parsing)

    unknown = sorted(set(args.cells) - set(CELLS))
    if unknown or not args.cells:
        raise ConfigError(f"--cells={','.join(unknown)}: name cells from {', '.join(CELLS)}")
    return args


def time_train_step(
    cell: str, length: int, *, batch_size: int, hidden: int, features: int, repeats: int, seed: int
) -> float:
    """Median milliseconds of one jitted Adam step of a one-layer RecurrentNet on sequences of
    `length` steps, after compilation and WARMUP_STEPS untimed steps."""
    import jax  # noqa: PLC0415 (after parsing: a bad command line fails fast)
    import optax  # noqa: PLC0415

    from research.models.recurrent import RecurrentNet  # noqa: PLC0415

    model = RecurrentNet(cell=cell, hidden_sizes=(hidden,), num_outputs=1)
    x_key, y_key, init_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(x_key, (batch_size, length, features))
    y = jax.random.normal(y_key, (batch_size, 1))
    params = jax.jit(model.init, static_argnames="train")(init_key, x, train=False)["params"]
    optimizer = optax.adam(1e-3)

    def step(params: dict, opt_state: tuple, x: jax.Array, y: jax.Array) -> tuple:
        def loss_fn(p: dict) -> jax.Array:
            outputs, _ = model.apply({"params": p}, x, train=True)
            return jax.numpy.mean((outputs - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = (params, optimizer.init(params))
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state, x, y).compile()
    times = []
    for i in range(WARMUP_STEPS + repeats):
        start = time.perf_counter()
        *state, loss = compiled(*state, x, y)
        jax.block_until_ready((state, loss))
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def table(ms: dict[str, list[float]], lengths: list[int]) -> list[str]:
    """Markdown rows: ms/step per cell and length, and the ms per 100 steps of T at the longest
    length over that at the shortest (1.0 = exactly linear in T)."""
    first, last = lengths[0], lengths[-1]
    head = [f"T={first} ms/step", *(f"T={t}" for t in lengths[1:])]
    head.append(f"ms per 100 steps of T at T={last} / at T={first}")
    rows = ["| cell | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for cell, times in ms.items():
        ratio = (times[-1] / last) / (times[0] / first)
        cells = [f"{t:.4g}" for t in times] + [f"{ratio:.3f}"]
        rows.append(f"| {cell} | " + " | ".join(cells) + " |")
    return rows


def bench(args: argparse.Namespace) -> list[str]:
    """Times every cell at every length; returns the report's lines."""
    import jax  # noqa: PLC0415

    lengths = sorted(args.lengths)
    options = {k: getattr(args, k) for k in ("batch_size", "hidden", "features", "repeats", "seed")}
    ms = {cell: [time_train_step(cell, t, **options) for t in lengths] for cell in args.cells}
    device = jax.devices()[0].device_kind
    return [
        *table(ms, lengths),
        "",
        f"device: {device}, jax {jax.__version__}, batch {args.batch_size}, hidden "
        f"{args.hidden}, features {args.features}, median of {args.repeats} steps",
    ]


def main(argv: list[str]) -> int:
    """Runs the benchmark; a user error is one line on stderr and exit code 2."""
    return run_table_command(_parse, bench, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
