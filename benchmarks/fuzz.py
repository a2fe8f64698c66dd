"""The long fuzz campaign: every target of tests/fuzz/ for many examples, failures recorded,
not stopped at.

The targets mutate, from valid seeds, recipes (YAML structure, values and text),
``--set`` values, search spaces, run metadata (the model file's metadata, ``recipe.yaml``,
``report.json``), checkpoints (``--resume``) and image bytes (``predict`` and the data of
``finetune``), and check every command's contract (tests/fuzz/contract.py): exit 0 with
valid, finite outputs, or exit 2 with one line on stderr and nothing written or changed;
never a traceback, never another exit code, never a changed input.

The examples run in chunks, round-robin over the targets (each chunk a fresh random seed
of its own, recorded), so a campaign stopped at any point has spread its examples over
every target; the summary is rewritten after each chunk. Counted per target: examples
run (those a cost bound set aside are counted apart as ``skipped``), exit codes,
tracebacks, non-finite saves, changed inputs, other violations, and the distinct failures
(a violation's kind and place, numbers and paths blurred) with one example each.

    python benchmarks/fuzz.py --examples 10000                  # the campaign (hours)
    python benchmarks/fuzz.py --examples 200 --targets recipe,set --out /tmp/fuzz
    nice -n 10 python benchmarks/fuzz.py --examples 10000 --minutes 60

Writes ``OUT/fuzz.json`` and ``OUT/fuzz.md`` (default OUT: benchmarks/results/fuzz).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import UnsatisfiedAssumption

from tests.fuzz import contract
from tests.fuzz.targets import TARGETS, build_seeds

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nctune-hypothesis")  # not the checkout
KINDS = ("traceback", "non-finite save", "changed input", "other")


def kind_of(violation: str) -> str:
    for kind in KINDS[:-1]:
        if violation.startswith(kind):
            return kind
    return "other"


class Tally:
    """What one target's examples gave."""

    def __init__(self) -> None:
        self.examples = self.skipped = self.harness_errors = 0
        self.exits: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.failures: dict[str, dict] = {}
        self.chunks: list[dict] = []
        self.seconds = 0.0

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "skipped": self.skipped,
            "harness_errors": self.harness_errors,
            "exit_codes": dict(self.exits),
            "violations": {k: self.kinds[k] for k in KINDS},
            "distinct_failures": len(self.failures),
            "failures": self.failures,
            "seconds": round(self.seconds, 1),
            "chunks": self.chunks,
        }


def _exception_text(res) -> str:
    exc = res.exception
    if exc is None or isinstance(exc, SystemExit):
        return ""
    return "".join(traceback.format_exception(exc))


def run_chunk(name: str, seeds, tally: Tally, n: int, chunk_seed: int) -> None:
    target = TARGETS[name]
    current: dict = {}

    def sink(found: list[str], example: str) -> None:
        res = current["result"]
        tally.exits[str(res.exit_code)] += 1
        for v in found:
            tally.kinds[kind_of(v)] += 1
            key = contract.normalised(v)
            if key not in tally.failures:
                tally.failures[key] = {
                    "violation": v,
                    "example": example[:2000],
                    "output": (res.output + _exception_text(res))[-3000:],
                    "count": 0,
                }
            tally.failures[key]["count"] += 1

    contract.SINK = sink

    @seed(chunk_seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def prop(data):
        example = data.draw(target.examples(seeds))
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
            try:
                run = target.run(seeds, example, Path(tmp))
            except UnsatisfiedAssumption:
                tally.skipped += 1
                raise
            except Exception:  # the harness's own bug: count it, keep going
                tally.harness_errors += 1
                sink([f"harness: {traceback.format_exc(limit=-1).splitlines()[-1]}"], repr(example))
                return
            current["result"] = run.result
            tally.examples += 1
            contract.enforce(run, repr(example))

    t0 = time.perf_counter()
    before = tally.examples
    try:
        prop()
    except Exception as err:  # hypothesis gave up (e.g. every example filtered): note it
        tally.chunks.append({"seed": chunk_seed, "error": repr(err)[:300]})
    tally.seconds += time.perf_counter() - t0
    tally.chunks.append({"seed": chunk_seed, "examples": tally.examples - before})


def write(out: Path, tallies: dict[str, Tally], started: float, args) -> None:
    doc = {
        "examples_goal": args.examples,
        "wall_seconds": round(time.time() - started, 1),
        "targets": {k: t.to_dict() for k, t in tallies.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    rows = [
        "| target | examples | skipped (cost) | exit 0 | exit 2 | other exits | tracebacks "
        "| non-finite saves | changed inputs | other violations | distinct failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, t in tallies.items():
        other = sum(v for c, v in t.exits.items() if c not in ("0", "2"))
        rows.append(
            f"| {k} | {t.examples} | {t.skipped} | {t.exits['0']} | {t.exits['2']} | {other} "
            f"| {t.kinds['traceback']} | {t.kinds['non-finite save']} "
            f"| {t.kinds['changed input']} | {t.kinds['other']} | {len(t.failures)} |"
        )
    lines = [f"# Fuzz campaign ({doc['wall_seconds'] / 3600:.2f} h)", "", *rows, ""]
    for k, t in tallies.items():
        for f in t.failures.values():
            lines.append(
                f"- **{k}** ×{f['count']}: `{f['violation']}` — example `{f['example'][:300]}`"
            )
    (out / "fuzz.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=10_000, help="examples per target")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    p.add_argument("--chunk", type=int, default=100, help="examples per target per round")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long")
    p.add_argument("--seed", type=int, default=0, help="seeds the chunks' seeds")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fuzz")
    args = p.parse_args()
    names = [n for n in args.targets.split(",") if n]
    unknown = set(names) - set(TARGETS)
    if unknown:
        p.error(f"--targets: unknown {sorted(unknown)}; choose from {sorted(TARGETS)}")
    started = time.time()
    rnd = random.Random(args.seed)
    seeds = build_seeds(Path(tempfile.mkdtemp(prefix="fuzz-seeds-")))
    tallies = {n: Tally() for n in names}
    deadline = started + args.minutes * 60 if args.minutes else None
    while any(tallies[n].examples < args.examples for n in names):
        for n in names:
            left = args.examples - tallies[n].examples
            if left <= 0:
                continue
            if deadline and time.time() > deadline:
                write(args.out, tallies, started, args)
                return
            run_chunk(n, seeds, tallies[n], min(args.chunk, left), rnd.randrange(2**32))
            write(args.out, tallies, started, args)
            t = tallies[n]
            print(
                f"{n}: {t.examples} examples, {t.skipped} skipped, exits {dict(t.exits)}, "
                f"{len(t.failures)} distinct failures",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    main()
