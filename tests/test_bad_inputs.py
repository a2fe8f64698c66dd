"""The bad-input promise of docs/cli.md, checked as a whole.

Every case is a documented class of bad input (recipe, ``--set``, command line, data,
backbone, strategy, output folder, resume, and the guarantees of issue 10: non-finite
numbers, seeds, busy folders, damaged checkpoints, divergence). Each must give exit code 2,
exactly one ``error:`` line on stderr naming the field or file, no traceback, nothing on
stdout, and leave every file on disk exactly as it was (nothing half-written, no staging
or lock files left next to ``--out``). Tiny random-init resnet10t at 32 px on a dozen PNGs;
nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from rich.console import Console
from safetensors.torch import save_file

from nctune.cli import common, main
from nctune.runs._lock import claim_folder

BASE: dict[str, Any] = {
    "backbone": {"name": "timm:resnet10t", "pretrained": False},
    "data": {"source": "imagefolder", "image_size": 32, "batch_size": 16, "val_fraction": 0.25},
    "train": {"epochs": 1},
    "strategy": {"name": "linear"},
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def plain_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stderr console as a redirected stream sees it (no colour, no progress bar)."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "CLICOLOR_FORCE", "PY_COLORS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NCTUNE_OFFLINE", "1")
    monkeypatch.setattr(common, "err_console", Console(stderr=True))


def _images(root: Path, counts: dict[str, int], size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = np.clip(40 + 60 * k + rng.normal(0, 30, (size, size, 3)), 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(root / cls / f"{i}.png")
    return root


@dataclass
class Env:
    tmp: Path
    data: Path
    recipe: Path

    def write(self, name: str, doc: Any) -> Path:
        path = self.tmp / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    def recipe_with(self, name: str = "r.yaml", **sections: Any) -> Path:
        doc = yaml.safe_load(self.recipe.read_text())
        for key, value in sections.items():
            if isinstance(value, dict):
                doc.setdefault(key, {}).update(value)
            else:
                doc[key] = value
        return self.write(name, doc)

    def data_at(self, path: Path, **data: Any) -> list[str]:
        return ["analyze", str(self.recipe_with(data={"path": str(path), **data}))]

    def analyze(self, *sets: str) -> list[str]:
        return ["analyze", str(self.recipe), *[a for s in sets for a in ("--set", s)]]

    def finetune(self, *sets: str) -> list[str]:
        return ["finetune", str(self.recipe), *[a for s in sets for a in ("--set", s)]]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    data = _images(tmp_path / "data", {"ant": 4, "bee": 4, "cat": 4})
    recipe = tmp_path / "recipe.yaml"
    doc = {**BASE, "data": {**BASE["data"], "path": str(data)}}
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Env(tmp_path, data, recipe)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (files with their bytes, folders as None)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# ---------------------------------------------------------------- the cases
# Each builder gets the Env and returns the command line up to (not including) --out;
# it may prepare files, and may return a context manager to hold while the command runs.
Case = Callable[[Env], Any]


def _out_preset(kind: str) -> Callable[[Env], Path]:
    """An --out that exists before the command, of the given kind."""

    def make(env: Env) -> Path:
        out = env.tmp / "out"
        if kind == "file":
            out.write_text("a file, not a folder")
        elif kind == "other-files":
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        return out

    return make


def _recipe_file(text: str | bytes) -> Case:
    def build(env: Env) -> list[str]:
        path = env.tmp / "bad.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["analyze", str(path)]

    return build


def _recipe_dir(env: Env) -> list[str]:
    (env.tmp / "a-folder.yaml").mkdir()
    return ["analyze", str(env.tmp / "a-folder.yaml")]


def _corrupt_image(env: Env) -> list[str]:
    folder = _images(env.tmp / "corrupt", {"ant": 4, "bee": 4})
    (folder / "bee" / "garbage.png").write_bytes(b"\x89PNG not really an image" * 20)
    return env.data_at(folder, val_fraction=0)


def _truncated_image(env: Env) -> list[str]:
    folder = _images(env.tmp / "truncated", {"ant": 4, "bee": 4})
    png = folder / "ant" / "1.png"
    png.write_bytes(png.read_bytes()[:200])
    return env.data_at(folder, val_fraction=0)


def _empty_class(env: Env) -> list[str]:
    folder = _images(env.tmp / "emptyclass", {"ant": 3, "bee": 3})
    (folder / "cow").mkdir()
    return env.data_at(folder)


def _empty_split(env: Env) -> list[str]:
    folder = env.tmp / "splits"
    _images(folder / "train", {"ant": 3, "bee": 3})
    for cls in ("ant", "bee"):
        (folder / "val" / cls).mkdir(parents=True)
    return env.data_at(folder)


def _csv(text: str) -> Case:
    def build(env: Env) -> list[str]:
        manifest = env.data / "labels.csv"
        manifest.write_text(text)
        return env.data_at(manifest, source="csv")

    return build


def _weights(kind: str) -> Case:
    def build(env: Env) -> list[str]:
        path = env.tmp / f"{kind}.safetensors"
        if kind == "resnet18":  # a real file of another architecture
            save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(path))
        else:
            path.write_bytes(b"not a weights file at all" * 10)
        return env.analyze(f"backbone.weights={path}", "backbone.pretrained=true")

    return build


def _existing_run(env: Env) -> list[str]:
    out = env.tmp / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "recipe.yaml").write_text(env.recipe.read_text())
    return env.finetune()


def _run_folder(env: Env, checkpoint: bytes | None = None, recipe: str | None = None) -> Path:
    run = env.tmp / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(recipe if recipe is not None else _resolved(env))
    if checkpoint is not None:
        (run / "checkpoint.pt").write_bytes(checkpoint)
    return run


def _resolved(env: Env) -> str:
    from nctune.config import load_recipe

    return load_recipe(env.recipe).to_yaml()


def _checkpoint_bytes(**override: Any) -> bytes:
    import io

    ckpt = {"format": 1, "epoch": 1, "phase": "main", "model": {}, **override}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _resume(kind: str) -> Case:
    def build(env: Env) -> list[str]:
        if kind == "no-run":
            run = env.tmp / "empty-run"
            run.mkdir()
        elif kind == "finished":  # a finished run: report.json, its checkpoint deleted
            run = _run_folder(env)
            (run / "report.json").write_text("{}")
        elif kind == "other-recipe":
            run = _run_folder(
                env, _checkpoint_bytes(), recipe=_resolved(env).replace("lr: 0.001", "lr: 0.5")
            )
        elif kind == "damaged-recipe":
            run = _run_folder(env, _checkpoint_bytes(), recipe="backbone: [unclosed")
        elif kind == "unreadable-checkpoint":
            run = _run_folder(env, b"definitely not a torch checkpoint")
        elif kind == "checkpoint-missing-step":
            run = _run_folder(env, _checkpoint_bytes())
        else:  # "checkpoint-format"
            run = _run_folder(env, _checkpoint_bytes(format=99))
        return [*env.finetune(), "--resume", str(run)]

    return build


class _Busy:
    """--out claimed by another command while this one runs (a lock held in this process on
    another file descriptor conflicts exactly as another process's does)."""

    def __init__(self, env: Env) -> None:
        self.claim = claim_folder(env.tmp / "out", command="nctune sweep other.yaml")

    def __enter__(self) -> None:
        self.claim.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.claim.__exit__(*exc)


def _busy(command: str) -> Case:
    def build(env: Env) -> tuple[list[str], _Busy]:
        args = env.analyze() if command == "analyze" else env.finetune()
        if command == "sweep":
            args = ["sweep", str(env.recipe), "--blocks", "layer1", "--modes", "layer"]
        return args, _Busy(env)

    return build


def _disk_full(env: Env) -> tuple[list[str], Any]:
    """The first write into --out's parent fails with ENOSPC (the staged analysis.json)."""
    import nctune.runs._io

    real = nctune.runs._io.os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("analysis.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(nctune.runs._io.os, "replace", full)

    class Undo:
        def __enter__(self):
            return None

        def __exit__(self, *exc):
            mp.undo()

    return env.analyze(), Undo()


# (id, builder, names the error line must contain, optional --out preset)
CASES: list[tuple[str, Case, tuple[str, ...], Callable[[Env], Path] | None]] = [
    # --- the recipe file
    (
        "recipe-missing",
        lambda e: ["analyze", str(e.tmp / "nope.yaml")],
        ("nope.yaml", "not found"),
        None,
    ),
    ("recipe-is-a-folder", _recipe_dir, ("a-folder.yaml", "folder"), None),
    (
        "recipe-malformed-yaml",
        _recipe_file("backbone: [\n  name: x\n"),
        ("bad.yaml", "line 3"),
        None,
    ),
    ("recipe-not-a-mapping", _recipe_file("- a\n- list\n"), ("bad.yaml", "mapping"), None),
    ("recipe-not-utf8", _recipe_file(b"\xff\xfe\x00backbone"), ("bad.yaml", "cannot read"), None),
    (
        "recipe-unknown-section",
        lambda e: ["analyze", str(e.recipe_with(trian={"lr": 1}))],
        ("r.yaml", "trian", "unknown key"),
        None,
    ),
    (
        "recipe-unknown-key",
        lambda e: ["analyze", str(e.recipe_with(data={"bach_size": 8}))],
        ("r.yaml", "data.bach_size"),
        None,
    ),
    (
        "recipe-wrong-type",
        lambda e: ["analyze", str(e.recipe_with(data={"batch_size": "many"}))],
        ("r.yaml", "data.batch_size", "'many'"),
        None,
    ),
    (
        "recipe-section-is-a-scalar",
        lambda e: ["analyze", str(e.recipe_with(train=5))],
        ("r.yaml", "train"),
        None,
    ),
    # --- --set overrides
    (
        "set-without-equals",
        lambda e: e.analyze("data.batch_size"),
        ("--set", "data.batch_size"),
        None,
    ),
    (
        "set-into-a-value",
        lambda e: e.analyze("data.batch_size.x=1"),
        ("--set", "data.batch_size", "not a section"),
        None,
    ),
    ("set-creates-a-section", lambda e: e.analyze("seed.x=1"), ("--set: seed",), None),
    (
        "set-wrong-type",
        lambda e: e.analyze("data.batch_size=abc"),
        ("--set: data.batch_size",),
        None,
    ),
    ("set-zero-batch", lambda e: e.analyze("data.batch_size=0"), ("--set: data.batch_size",), None),
    (
        "set-fraction-above-1",
        lambda e: e.analyze("data.val_fraction=1.5"),
        ("--set: data.val_fraction",),
        None,
    ),
    (
        "set-unknown-key",
        lambda e: e.analyze("data.colour=red"),
        ("--set: data.colour", "unknown key"),
        None,
    ),
    ("set-bad-device", lambda e: e.analyze("device=tpu9"), ("device", "tpu9"), None),
    ("set-empty-backbone", lambda e: e.analyze("backbone.name= "), ("backbone.name",), None),
    ("set-unknown-data-source", lambda e: e.analyze("data.source=nope"), ("data.source",), None),
    # --- numbers (issue 10): non-finite floats anywhere, seeds torch/numpy cannot take
    ("lr-zero", lambda e: e.finetune("train.lr=0"), ("train.lr",), None),
    ("lr-negative", lambda e: e.finetune("train.lr=-1e-3"), ("train.lr",), None),
    ("lr-inf", lambda e: e.finetune("train.lr=.inf"), ("train.lr", "finite"), None),
    ("lr-nan", lambda e: e.finetune("train.lr=.nan"), ("train.lr", "finite"), None),
    (
        "weight-decay-inf",
        lambda e: e.finetune("train.weight_decay=inf"),
        ("train.weight_decay", "finite"),
        None,
    ),
    (
        "grad-clip-nan",
        lambda e: e.finetune("train.grad_clip=nan"),
        ("train.grad_clip", "finite"),
        None,
    ),
    (
        "model-kwargs-nan",
        lambda e: e.analyze("backbone.model_kwargs={drop_rate: .nan}"),
        ("backbone.model_kwargs", "finite"),
        None,
    ),
    (
        "batch-size-beyond-c-long",
        lambda e: e.analyze(f"data.batch_size={10**20}"),
        ("--set: data.batch_size", "at most"),
        None,
    ),
    (
        "epochs-beyond-c-int",
        lambda e: e.finetune(f"train.epochs={2**31}"),
        ("--set: train.epochs", "at most"),
        None,
    ),
    (
        "section-set-to-null",
        lambda e: e.analyze("data=null"),
        ("--set: data", "valid dictionary"),
        None,
    ),
    ("seed-negative", lambda e: e.finetune("seed=-1"), ("--set: seed",), None),
    ("seed-2-to-the-70", lambda e: e.finetune(f"seed={2**70}"), ("--set: seed",), None),
    # --- data
    (
        "data-path-missing",
        lambda e: e.data_at(e.tmp / "no-such-data"),
        ("data.path", "no-such-data"),
        None,
    ),
    ("data-path-null", lambda e: e.analyze("data.path=null"), ("data.path", "required"), None),
    ("corrupt-image", _corrupt_image, ("garbage.png", "cannot read image"), None),
    ("truncated-image", _truncated_image, ("1.png",), None),
    ("class-without-images", _empty_class, ("cow", "no images"), None),
    (
        "one-class",
        lambda e: e.data_at(_images(e.tmp / "oneclass", {"ant": 4})),
        ("oneclass", "two classes"),
        None,
    ),
    ("empty-split", _empty_split, ("val", "empty"), None),
    ("csv-is-a-folder", lambda e: e.data_at(e.data, source="csv"), ("data.path", "folder"), None),
    ("csv-missing-column", _csv("file,label\nant/0.png,ant\n"), ("labels.csv", "'path'"), None),
    (
        "csv-missing-image",
        _csv("path,label\nant/0.png,ant\nbee/9.png,bee\n"),
        ("labels.csv", "line 3", "9.png"),
        None,
    ),
    (
        "csv-label-outside-classes",
        _csv("path,label,split\nant/0.png,ant,train\nbee/0.png,bee,train\ncat/0.png,wasp,val\n"),
        ("labels.csv", "line 4", "'wasp'"),
        None,
    ),
    (
        "csv-bad-split",
        _csv("path,label,split\nant/0.png,ant,train\nbee/0.png,bee,later\n"),
        ("labels.csv", "line 3", "'later'"),
        None,
    ),
    # --- backbone
    (
        "backbone-unknown",
        lambda e: e.analyze("backbone.name=timm:resnet_nope"),
        ("backbone.name", "resnet_nope"),
        None,
    ),
    (
        "backbone-unknown-source",
        lambda e: e.analyze("backbone.name=zoo:resnet18"),
        ("backbone.name", "zoo"),
        None,
    ),
    (
        "weights-missing",
        lambda e: e.analyze(f"backbone.weights={e.tmp / 'w.pth'}", "backbone.pretrained=true"),
        ("backbone.weights", "w.pth"),
        None,
    ),
    (
        "weights-other-architecture",
        _weights("resnet18"),
        ("backbone.weights", "resnet18.safetensors"),
        None,
    ),
    ("weights-garbage", _weights("garbage"), ("backbone.weights", "garbage.safetensors"), None),
    # --- strategy and layers
    ("strategy-unknown", lambda e: e.finetune("strategy.name=magic"), ("strategy.name",), None),
    ("rule-unknown", lambda e: e.finetune("strategy.rule=kne"), ("strategy.rule", "kne"), None),
    (
        "strategy-layers-no-module",
        lambda e: e.finetune("strategy.name=layers", "strategy.layers=[layer9.9]"),
        ("strategy.layers", "layer9.9"),
        None,
    ),
    (
        "analysis-layers-no-module",
        lambda e: e.analyze("analysis.layers=[nowhere.*]"),
        ("analysis.layers", "nowhere"),
        None,
    ),
    (
        "lora-on-a-batchnorm",
        lambda e: e.finetune("strategy.name=lora", "strategy.lora_targets=[layer1.0.bn1]"),
        ("strategy.lora_targets",),
        None,
    ),
    # --- command line
    (
        "unknown-option",
        lambda e: ["analyze", "--out", str(e.tmp / "out"), "--bogus"],
        ("nctune analyze", "--bogus"),
        None,
    ),
    ("unknown-command", lambda e: ["frobnicate"], ("frobnicate",), None),
    (
        "set-without-value",
        lambda e: ["analyze", "--out", str(e.tmp / "out"), "--set"],
        ("--set",),
        None,
    ),
    # --- output folders
    ("out-is-a-file", lambda e: e.analyze(), ("--out", "out"), _out_preset("file")),
    (
        "out-under-a-file",
        lambda e: [*e.analyze(), "--out", str(e.tmp / "recipe.yaml" / "sub")],
        ("--out", "recipe.yaml"),
        None,
    ),
    ("out-is-the-root", lambda e: [*e.analyze(), "--out", "/"], ("--out /", "root"), None),
    (
        "out-holds-other-files",
        lambda e: e.analyze(),
        ("--out", "analysis.json"),
        _out_preset("other-files"),
    ),
    ("finetune-out-holds-a-run", _existing_run, ("--out", "--overwrite"), None),
    ("out-disk-full", _disk_full, ("analysis.json", "No space left on device"), None),
    (
        "out-busy-analyze",
        _busy("analyze"),
        ("--out", "in use by another nctune run", "nctune sweep other.yaml"),
        None,
    ),
    (
        "out-busy-finetune",
        _busy("finetune"),
        ("--out", "in use by another nctune run", f"pid {os.getpid()}"),
        None,
    ),
    ("out-busy-sweep", _busy("sweep"), ("--out", "in use by another nctune run"), None),
    # --- resume
    ("resume-not-a-run", _resume("no-run"), ("--resume", "not an nctune run folder"), None),
    ("resume-finished-run", _resume("finished"), ("--resume", "finished", "--overwrite"), None),
    ("resume-other-recipe", _resume("other-recipe"), ("--resume", "train.lr"), None),
    ("resume-damaged-recipe", _resume("damaged-recipe"), ("recipe.yaml is damaged",), None),
    (
        "resume-unreadable-checkpoint",
        _resume("unreadable-checkpoint"),
        ("checkpoint.pt", "unreadable"),
        None,
    ),
    (
        "resume-checkpoint-missing-step",
        _resume("checkpoint-missing-step"),
        ("checkpoint.pt", "step"),
        None,
    ),
    (
        "resume-checkpoint-format",
        _resume("checkpoint-format"),
        ("checkpoint.pt", "format 99"),
        None,
    ),
    # --- training that cannot go on (issue 10)
    (
        "diverges",
        lambda e: e.finetune(
            "train.lr=1e38", "data.batch_size=4", "train.optimizer=sgd", "train.grad_clip=null"
        ),
        ("train: diverged at epoch 1", "lower train.lr or enable train.grad_clip"),
        None,
    ),
    (
        "lr-overflows",
        lambda e: e.finetune("train.lr=1e300", "train.optimizer=sgd", "train.grad_clip=null"),
        ("overflows", "lower train.lr"),
        None,
    ),
]


def test_the_corpus_is_large_and_every_case_distinct():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The console-script entry point (nctune.cli.main) in this process: exit code, out, err."""
    capsys.readouterr()
    if args and args[0] in ("analyze", "finetune", "sweep"):
        # -q: off a terminal these commands log passes and epochs on stderr (issue 15);
        # the promise checked here is the error line itself
        args = [args[0], "-q", *args[1:]]
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.mark.parametrize(
    ("build", "names", "preset"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_exit_2_and_leaves_the_disk_as_it_was(
    env, capsys, build, names, preset
):
    out = preset(env) if preset else env.tmp / "out"
    built = build(env)
    args, hold = built if isinstance(built, tuple) else (built, None)
    if args[0] in ("analyze", "finetune", "sweep") and not {"--out", "--resume"} & set(args):
        args = [*args, "--out", str(out)]
    with hold or contextlib.nullcontext():
        before = snapshot(env.tmp)  # (a held lock file belongs to the other command)
        code, stdout, stderr = _run(args, capsys)
        after = snapshot(env.tmp)
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stderr and stdout == ""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert after == before, sorted(set(after) ^ set(before))  # nothing written, nothing moved
