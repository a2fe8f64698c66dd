#!/usr/bin/env python
"""Start-up cost of the command line: what `nctune --help` and `nctune analyze` import.

Each measurement runs in a fresh interpreter, ``--repeat`` times; the median is reported.
Run it in two checkouts (e.g. ``git worktree add /tmp/before <commit>``) to compare:

    python benchmarks/import_time.py [--repeat 5] [--json]

Measured:

* ``help_wall_s`` — wall time of ``python -m nctune --help`` (interpreter start included);
* ``cli_import_s`` — ``python -X importtime -c "import nctune.cli"``: cumulative import time
  of the CLI package, the only thing ``--help`` needs;
* ``analyze_imports_wall_s`` — wall time of importing what ``nctune analyze`` imports before
  its first batch (cli, config, analyze, report, backbones, data, selection);
* ``heavy_loaded`` — which heavy packages that import set loads;
* ``refusal_cpu_s`` — CPU seconds (user + system, ``getrusage(RUSAGE_CHILDREN)``) of
  ``nctune COMMAND --set train.epoch=3`` for every recipe command, the worst of them: a bad
  recipe or ``--set`` is refused before torch and timm load. Goal (issue 23): ≤ 1 s
  (``refusal_goal_met``). The tests check only that torch is not loaded at the refusal
  (tests/test_config_names.py); the time is measured here, not asserted in a test.

The numbers are wall-clock on whatever else the machine is doing: compare runs made side by
side, not against numbers from another day.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ANALYZE_IMPORTS = (
    "import nctune.cli, nctune.config, nctune.analyze, nctune.report, nctune.backbones, "
    "nctune.data, nctune.selection"
)
HEAVY = ("torch", "torchvision", "timm", "matplotlib", "peft", "transformers", "accelerate",
         "optuna", "sklearn", "scipy")  # fmt: skip


def _wall(args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


#: Commands that read a recipe, and the goal for refusing a bad ``--set`` (CPU seconds).
RECIPE_COMMANDS = ("analyze", "finetune", "sweep", "rank", "tune")
REFUSAL_GOAL_CPU_S = 1.0


def _refusal_cpu(command: str) -> float:
    """CPU seconds of one refused ``nctune COMMAND --set train.epoch=3`` (exit 2 expected)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "nctune", command, "--set", "train.epoch=3"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 2:
        raise SystemExit(f"{command}: expected exit 2, got {done.returncode}: {done.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _cli_import() -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import nctune.cli"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    line = [ln for ln in done.stderr.splitlines() if ln.rstrip().endswith("| nctune.cli")][-1]
    return int(line.split("|")[1]) / 1e6


def measure(repeat: int = 3) -> dict:
    """Medians over ``repeat`` fresh interpreters (see the module docstring)."""
    py = sys.executable
    loaded = subprocess.run(
        [py, "-c", f"import sys; {ANALYZE_IMPORTS}; "
                   f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return {
        "help_wall_s": statistics.median(
            _wall([py, "-m", "nctune", "--help"]) for _ in range(repeat)
        ),
        "cli_import_s": statistics.median(_cli_import() for _ in range(repeat)),
        "analyze_imports_wall_s": statistics.median(
            _wall([py, "-c", ANALYZE_IMPORTS]) for _ in range(repeat)
        ),
        "heavy_loaded": loaded,
        "refusal_cpu_s": (
            refusal := max(
                statistics.median(_refusal_cpu(c) for _ in range(repeat)) for c in RECIPE_COMMANDS
            )
        ),
        "refusal_goal_met": refusal <= REFUSAL_GOAL_CPU_S,
        "repeat": repeat,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = measure(args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value:.3f}" if isinstance(value, float) else f"{key:24s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
