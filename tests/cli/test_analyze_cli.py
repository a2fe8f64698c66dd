"""``nctune analyze`` end to end: result files, ``--json``, ``--set``, and the bad-input contract.

DESIGN §4: exit 0 on success; exit 2 on bad input with exactly one line on stderr that
names the field or file, no traceback and no partial output; exit 1 with a traceback on
an internal error. Tiny random-init resnet10t at 32 px on a dozen PNGs; nothing downloaded.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from nctune.cli import app

RESULT_FILES = ["analysis.json", "collapse.png", "recipe.yaml"]
LAYER_KEYS = {"index", "name", "dim", "nc1", "trace_ratio", "cdnv", "ncc_accuracy"}
TOP_KEYS = {"backbone", "dataset", "num_samples", "num_classes", "layers", "recommendation"}
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: object) -> Result:
    # typer's CliRunner keeps stdout and stderr apart (result.output is the two mixed)
    return CliRunner().invoke(app, ["analyze", *map(str, args)])


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes; None when the folder does not exist."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Staging folders (``.DIR.*.tmp``) or swapped-out old results left next to ``out``."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def assert_bad_input(result: Result, *names: str) -> str:
    """Exit 2, nothing on stdout, one non-empty ``error:`` line on stderr naming ``names``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: ") :].strip(), line
    for name in names:
        assert name in line, (name, line)
    return line


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def data_dir(make_image_folder) -> Path:
    return make_image_folder("data", {"ant": 4, "bee": 4, "cat": 4})


@pytest.fixture
def recipe(write_recipe, data_dir: Path) -> Path:
    return write_recipe(data={"path": str(data_dir)})


# ------------------------------------------------------------------ happy path
def test_json_result_files_and_overrides(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    result = invoke(
        recipe,
        "--out",
        out,
        "--json",
        "--set",
        "data.batch_size=5",
        "--set",
        "analysis.layers=[layer2.0, layer4.0]",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert sorted(os.listdir(out)) == RESULT_FILES
    assert leftovers(out) == []

    doc = json.loads((out / "analysis.json").read_text())
    assert json.loads(result.stdout) == doc  # --json: stdout is that document and nothing else
    assert set(doc) >= TOP_KEYS
    assert doc["backbone"] == "timm:resnet10t"
    assert doc["dataset"] == f"imagefolder:{recipe.parent / 'data'}"
    assert (doc["num_classes"], doc["num_samples"]) == (3, 9)  # 12 images, 3 held out for val
    for layer in doc["layers"]:
        assert set(layer) >= LAYER_KEYS
        assert layer["nc1"] > 0 and layer["dim"] > 0
        assert 0.0 <= layer["ncc_accuracy"] <= 1.0
    # the --set layer list is what was measured (+ the classifier input), and it is recorded
    assert [layer["name"] for layer in doc["layers"]] == ["layer2.0", "layer4.0", "pre_logits"]
    assert [layer["index"] for layer in doc["layers"]] == [0, 1, 2]
    assert set(doc["recommendation"]) >= {"rule", "layers", "reason"}
    assert set(doc["recommendation"]["layers"]) <= {"layer2.0", "layer4.0"}
    assert (out / "collapse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["data"]["batch_size"] == 5
    assert saved["analysis"]["layers"] == ["layer2.0", "layer4.0"]
    assert saved["backbone"]["name"] == "timm:resnet10t"


def test_rerun_replaces_existing_folder(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    (out / "analysis.json").write_text("{}")
    result = invoke(recipe, "--out", out, "--set", "analysis.layers=[layer4.0]")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == RESULT_FILES  # replaced as a whole, not merged
    assert leftovers(out) == []
    assert json.loads((out / "analysis.json").read_text())["num_classes"] == 3
    # without --json: a table on stdout, not JSON
    assert "Recommendation" in result.stdout and "layer4.0" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_a_folder_of_other_files_is_never_replaced(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own")
    result = invoke(recipe, "--out", out)
    assert_bad_input(result, "--out", "analysis.json")
    assert os.listdir(out) == ["notes.txt"] and leftovers(out) == []


def test_failure_while_writing_leaves_old_results(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after analysis.json is staged must not touch the previous results."""
    import nctune.report

    out = tmp_path / "out"
    out.mkdir()
    (out / "analysis.json").write_text('{"old": true}')
    before = snapshot(out)

    def broken_plot(*args: object, **kwargs: object) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(nctune.report, "plot_profile", broken_plot)
    result = invoke(recipe, "--out", out, "--set", "analysis.layers=[layer4.0]")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)  # an internal error, not bad input
    assert snapshot(out) == before
    assert leftovers(out) == []


# ------------------------------------------------------------------ bad inputs
@dataclass(frozen=True)
class Env:
    """What a bad-input case builds its arguments from."""

    tmp: Path
    recipe: Path
    data: Path
    make_image_folder: Callable[..., Path]
    write_recipe: Callable[..., Path]

    def with_data(self, path: Path, **data: object) -> list[str]:
        return [str(self.write_recipe("r.yaml", data={"path": str(path), **data}))]


def _malformed_yaml(env: Env) -> list[str]:
    bad = env.tmp / "broken.yaml"
    bad.write_text("backbone: [\n  name: x\n")
    return [str(bad)]


def _unknown_key(env: Env) -> list[str]:
    return [str(env.write_recipe("typo.yaml", data={"path": str(env.data), "bach_size": 8}))]


def _wrong_type(env: Env) -> list[str]:
    return [str(env.write_recipe("type.yaml", data={"path": str(env.data), "batch_size": "many"}))]


def _missing_recipe(env: Env) -> list[str]:
    return [str(env.tmp / "no-such-recipe.yaml")]


def _missing_dataset(env: Env) -> list[str]:
    return env.with_data(env.tmp / "no-such-data")


def _unknown_backbone(env: Env) -> list[str]:
    return [str(env.recipe), "--set", "backbone.name=timm:resnet_nope"]


def _wrong_weights(env: Env) -> list[str]:
    # resnet18 weights for the recipe's resnet10t: a real file of the wrong architecture
    weights = env.tmp / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=3).state_dict(), str(weights))
    return [str(env.recipe), "--set", f"backbone.weights={weights}"]


def _corrupt_image(env: Env, workers: int = 0) -> list[str]:
    folder = env.make_image_folder(f"corrupt{workers}", {"ant": 4, "bee": 4})
    (folder / "bee" / "garbage.png").write_bytes(b"\x89PNG not really an image" * 20)
    return env.with_data(folder, num_workers=workers, val_fraction=0)


def _truncated_image(env: Env) -> list[str]:
    folder = env.make_image_folder("truncated", {"ant": 4, "bee": 4})
    png = folder / "ant" / "1.png"
    png.write_bytes(png.read_bytes()[:200])
    return env.with_data(folder, val_fraction=0)


def _label_outside_classes(env: Env) -> list[str]:
    manifest = env.data / "labels.csv"
    manifest.write_text(
        "path,label,split\n"
        "ant/0.png,ant,train\nant/1.png,ant,train\nbee/0.png,bee,train\nbee/1.png,bee,train\n"
        "cat/0.png,wasp,val\n"
    )
    return env.with_data(manifest, source="csv")


def _empty_class(env: Env) -> list[str]:
    folder = env.make_image_folder("emptyclass", {"ant": 3, "bee": 3})
    (folder / "cow").mkdir()
    return env.with_data(folder)


def _one_class(env: Env) -> list[str]:
    return env.with_data(env.make_image_folder("oneclass", {"ant": 4}))


def _empty_split(env: Env) -> list[str]:
    folder = env.make_image_folder("splits", {"train": {"ant": 3, "bee": 3}})
    for cls in ("ant", "bee"):
        (folder / "val" / cls).mkdir(parents=True)
    return env.with_data(folder)


def _bad_device(env: Env) -> list[str]:
    return [str(env.recipe), "--set", "device=tpu9"]


def _set_without_equals(env: Env) -> list[str]:
    return [str(env.recipe), "--set", "data.batch_size"]


# (id, arguments before --out, substrings the error line must contain)
BAD_INPUTS: list[tuple[str, Callable[[Env], list[str]], tuple[str, ...]]] = [
    ("malformed-yaml", _malformed_yaml, ("broken.yaml", "line 3")),
    ("missing-recipe", _missing_recipe, ("no-such-recipe.yaml",)),
    ("unknown-key", _unknown_key, ("typo.yaml", "data.bach_size")),
    ("wrong-type", _wrong_type, ("type.yaml", "data.batch_size", "'many'")),
    ("set-without-equals", _set_without_equals, ("--set", "data.batch_size")),
    ("missing-dataset", _missing_dataset, ("data.path", "no-such-data")),
    ("unknown-backbone", _unknown_backbone, ("backbone.name", "resnet_nope")),
    ("weights-mismatch", _wrong_weights, ("backbone.weights", "resnet18.safetensors")),
    ("corrupt-image", _corrupt_image, ("garbage.png",)),
    # the message crosses a process boundary here; the worker is stopped with the error
    # (left to the garbage collector, torch waited 5 s for it, in whichever test that was)
    ("corrupt-image-in-worker", lambda env: _corrupt_image(env, workers=1), ("garbage.png",)),
    ("truncated-image", _truncated_image, ("1.png",)),
    ("label-outside-classes", _label_outside_classes, ("labels.csv", "line 6", "'wasp'")),
    ("class-without-images", _empty_class, ("cow", "no images")),
    ("fewer-than-two-classes", _one_class, ("oneclass", "two classes")),
    ("empty-split", _empty_split, ("val", "empty")),
    ("bad-device", _bad_device, ("device", "tpu9")),
]


@pytest.fixture
def env(tmp_path, recipe, data_dir, make_image_folder, write_recipe) -> Env:
    return Env(tmp_path, recipe, data_dir, make_image_folder, write_recipe)


@pytest.mark.parametrize(
    ("build", "names"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_exits_2_with_one_line_and_no_output(
    env: Env, build: Callable[[Env], list[str]], names: tuple[str, ...]
) -> None:
    args = build(env)
    fresh = env.tmp / "fresh"
    children = set(multiprocessing.active_children())
    assert_bad_input(invoke(*args, "--out", fresh), *names)
    assert set(multiprocessing.active_children()) <= children  # no loader worker left running
    assert not fresh.exists()
    assert leftovers(fresh) == []

    existing = env.tmp / "existing"
    existing.mkdir()
    (existing / "analysis.json").write_text('{"from": "an earlier run"}')
    before = snapshot(existing)
    assert_bad_input(invoke(*args, "--out", existing), *names)
    assert snapshot(existing) == before
    assert leftovers(existing) == []


@pytest.mark.parametrize(
    ("where", "names"),
    [
        pytest.param(lambda tmp: tmp / "a-file" / "out", ("--out", "a-file"), id="under-a-file"),
        pytest.param(lambda tmp: tmp / "a-file", ("--out", "a-file"), id="is-a-file"),
        # even root cannot create files in procfs, whatever the permission bits say
        pytest.param(
            lambda tmp: Path("/proc/nctune-test/out"),
            ("--out", "/proc"),
            id="procfs",
            marks=pytest.mark.skipif(not Path("/proc").is_dir(), reason="no procfs"),
        ),
    ],
)
def test_unwritable_out_exits_2(
    recipe: Path, tmp_path: Path, where: Callable[[Path], Path], names: tuple[str, ...]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    out = where(tmp_path)
    assert_bad_input(invoke(recipe, "--out", out), *names)
    assert (tmp_path / "a-file").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "data", "recipe.yaml"]


def test_one_sample_per_class_is_not_a_crash(recipe: Path, tmp_path: Path) -> None:
    """One image per class gives NC1 = 0 everywhere; the knee rule used to divide by it."""
    out = tmp_path / "out"
    result = invoke(recipe, "--out", out, "--json", "--set", "data.samples_per_class=1")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["num_samples"] == 3
    assert all(layer["nc1"] < 1e-9 for layer in doc["layers"])  # zero up to rounding
    assert doc["recommendation"]["layers"][0] in [layer["name"] for layer in doc["layers"]]


# ------------------------------------------------------------------ the real entry point
def run_module(*args: object, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m nctune ARGS`` (or ``python -c CODE ARGS``) as a user's shell runs it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "PY_COLORS", "CLICOLOR_FORCE")
    }
    env.update(NCTUNE_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    head = ["-c", code] if code else ["-m", "nctune"]
    return subprocess.run(
        [sys.executable, *head, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_point_bad_recipe_and_bad_image(env: Env) -> None:
    out = env.tmp / "out"
    early = run_module("analyze", *_malformed_yaml(env), "--out", out, cwd=env.tmp)
    late = run_module("analyze", *_corrupt_image(env), "--out", out, cwd=env.tmp)
    for proc, name in ((early, "broken.yaml"), (late, "garbage.png")):
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], lines
    assert not out.exists() and leftovers(out) == []


@pytest.mark.parametrize(
    "args, names",
    [
        (["analyze", "--bogus"], ["nctune analyze", "--bogus"]),
        (["analyze", "--set"], ["--set"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_entry_point_usage_errors_are_one_line(tmp_path: Path, args, names) -> None:
    proc = run_module(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(name in lines[0] for name in names) and "--help" in lines[0]


def test_entry_point_internal_error_exits_1_with_traceback(recipe: Path, tmp_path: Path) -> None:
    code = (
        "import importlib, runpy\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('boom from a test')\n"
        "importlib.import_module('nctune.analyze').analyze_recipe = boom\n"
        "runpy.run_module('nctune', run_name='__main__')\n"
    )
    out = tmp_path / "out"
    proc = run_module("analyze", recipe, "--out", out, cwd=tmp_path, code=code)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr
    assert "RuntimeError" in proc.stderr and "boom from a test" in proc.stderr
    assert "During handling" not in proc.stderr  # the entry point itself must not fail on it
    assert proc.stdout == ""
    assert not out.exists() and leftovers(out) == []


def test_cuda_device_when_absent(recipe: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_bad_input(invoke(recipe, "--out", tmp_path / "o", "--set", "device=cuda"), "device")
