"""The contract every command keeps under fuzzing, as one checker the tests and the
campaign (``benchmarks/fuzz.py``) share.

A command given (mutated) input either succeeds — exit 0, its outputs valid: every saved
JSON (and JSON-lines) number finite, every saved tensor finite — or refuses it — exit 2,
exactly one line on stderr, nothing written or changed. Never a traceback, never another
exit code, and the input files are never changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

#: Where violations go: None raises (the tests); the campaign installs a recorder.
SINK: Callable[[list[str], str], None] | None = None


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and link under ``roots`` → a hash of its bytes (a link: its target)."""
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            continue
        paths = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_symlink():
                out[str(p)] = "link:" + str(p.readlink())
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


def invoke(args: Iterable[Any]) -> Result:
    """The command in-process (typer's CliRunner): exceptions are caught, not raised."""
    from nctune.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_json(text: str) -> None:
    def walk(v: Any) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"non-finite number {v}")
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(json.loads(text, parse_constant=_reject_constant))


def saved_problems(paths: Iterable[Path]) -> list[str]:
    """What is wrong with the files a command saved: a JSON or JSON-lines file that does not
    parse or holds NaN/Infinity, a safetensors file with a non-finite tensor."""
    problems = []
    for p in paths:
        if not p.is_file() or p.is_symlink():
            continue
        try:
            if p.suffix == ".json":
                _finite_json(p.read_text(encoding="utf-8"))
            elif p.suffix == ".jsonl":
                for line in p.read_text(encoding="utf-8").splitlines():
                    _finite_json(line)
            elif p.suffix == ".safetensors":
                from safetensors.torch import load_file

                for name, t in load_file(str(p)).items():
                    if t.is_floating_point() and not bool(t.isfinite().all()):
                        raise ValueError(f"tensor {name} not finite")
        except ValueError as err:
            problems.append(f"non-finite save: {p.name}: {err}")
    return problems


def _traceback_signature(exc: BaseException) -> str:
    """The exception's type and the deepest nctune frame: one failure however it was hit."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/nctune/" in f.filename] or frames[-1:]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"traceback: {type(exc).__name__} at {where}"


@dataclass
class Run:
    """One command run: its result, and the files before and after.

    Attributes:
        result: CliRunner's result.
        inputs: files the command reads (must never change).
        out: the folder (or file) it writes.
        allow_on_refusal: names a refusal may leave in ``out`` (a run's kept checkpoint).
    """

    result: Result
    inputs_before: dict[str, str]
    inputs_after: dict[str, str]
    out_before: dict[str, str]
    out_after: dict[str, str]
    out: Path
    allow_on_refusal: tuple[str, ...] = ()
    required: tuple[str, ...] = field(default_factory=tuple)


def run_command(
    args: list[Any],
    *,
    inputs: list[Path],
    out: Path,
    allow_on_refusal: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> Run:
    """Run ``nctune ARGS`` in-process with the file snapshots the contract needs."""
    inputs_before, out_before = snapshot(*inputs), snapshot(out)
    res = invoke(args)
    return Run(
        res,
        inputs_before,
        snapshot(*inputs),
        out_before,
        snapshot(out),
        out,
        allow_on_refusal,
        required,
    )


def violations(run: Run) -> list[str]:
    """Every way ``run`` breaks the contract (empty: kept)."""
    res, found = run.result, []
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        found.append(_traceback_signature(exc))
    elif "Traceback (most recent call last)" in res.output:
        found.append("traceback: printed")
    if res.exit_code not in (0, 2):
        found.append(f"exit {res.exit_code}")
    if run.inputs_after != run.inputs_before:
        changed = sorted(set(run.inputs_after.items()) ^ set(run.inputs_before.items()))
        found.append(f"changed input: {Path(changed[0][0]).name}")
    if res.exit_code == 2:
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        if len(lines) != 1:
            found.append(f"refusal: {len(lines)} stderr lines")
        # a run stopped after its first checkpoint keeps it, and says so (docs/cli.md)
        ckpts = [p for p in run.out_after if Path(p).name == "checkpoint.pt"]
        allowed = run.allow_on_refusal if ckpts else ()
        if any(run.out_before.get(p) != run.out_after[p] for p in ckpts) and not any(
            "checkpoint" in x for x in lines
        ):
            found.append("refusal kept a checkpoint without saying so")
        new = {
            p: h
            for p, h in run.out_after.items()
            if run.out_before.get(p) != h and Path(p).name not in allowed and h != "dir"
        }
        gone = set(run.out_before) - set(run.out_after)
        if new or (gone and not run.allow_on_refusal):
            what = sorted(new) or sorted(gone)
            found.append(f"refusal wrote or removed: {Path(what[0]).name}")
    if res.exit_code == 0:
        written = [Path(p) for p in run.out_after if run.out_after[p] != "dir"]
        found += saved_problems(written)
        for name in run.required:
            if not any(Path(p).name == name for p in written):
                found.append(f"success without {name}")
    return found


def enforce(run: Run, example: str) -> None:
    """Raise (tests) or record (campaign) the run's violations."""
    found = violations(run)
    if SINK is not None:
        SINK(found, example)
        return
    assert not found, f"{found}\nexample: {example}\nstdout/stderr:\n{run.result.output[-3000:]}"


def normalised(text: str) -> str:
    """A violation's text with numbers and paths blurred, to count distinct failures."""
    return re.sub(r"\d+", "N", re.sub(r"/[^\s:]+", "PATH", text))
