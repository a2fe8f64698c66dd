"""Each defect the fuzzer found, as the example that found it (tests/fuzz/targets.py runs
it; the contract must hold). Docs: docs/benchmarks.md, "Fuzzing"."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.fuzz.contract import enforce
from tests.fuzz.targets import TARGETS, _skeleton


def _run(seeds, target: str, example, tmp_path: Path):
    run = TARGETS[target].run(seeds, example, tmp_path)
    enforce(run, repr(example))
    return run


def _damaged_tiff(file: str, edit: int, mode: str, size: tuple, ext: str) -> dict:
    """An ``image`` example: ``file`` re-encoded as a ``mode`` TIFF of ``size``, its bytes
    damaged with seed ``edit``, renamed to ``ext``, then fine-tuned on."""
    return {
        "file": file,
        "format": "tiff",
        "edit": edit,
        "bytes": True,
        "mode": mode,
        "size": size,
        "command": "finetune",
        "ext": ext,
    }


def _moment(seeds) -> tuple:
    ckpt = torch.load(seeds.halfway / "checkpoint.pt", weights_only=True)
    key = next(iter(ckpt["optimizer"]["state"]))
    return ckpt, key


@pytest.mark.parametrize("value", [{"__tensor__": False}, 1000000000], ids=["dict", "int"])
def test_an_optimizer_moment_that_is_no_tensor_is_refused_before_training(seeds, tmp_path, value):
    """Found: a momentum buffer replaced by a mapping (then, once that was refused, by a
    number) passed the checkpoint's checks and failed in the first step (AttributeError:
    'dict' object has no attribute 'mul_'; 'int' object …)."""
    ckpt, key = _moment(seeds)
    doc = _skeleton(ckpt)
    doc["optimizer"]["state"][key]["momentum_buffer"] = value
    run = _run(seeds, "checkpoint", {"kind": "tree", "doc": doc}, tmp_path)
    assert run.result.exit_code == 2 and "momentum_buffer" in run.result.stderr


@pytest.mark.parametrize("value", [None, "0.9", [0.9]], ids=["deleted", "text", "list"])
def test_an_optimizer_group_lacking_a_setting_is_refused_before_training(seeds, tmp_path, value):
    """Found: a parameter group without its ``momentum`` (deleted) passed the checks and
    failed in the first step (KeyError: 'momentum' inside torch's SGD)."""
    ckpt, _ = _moment(seeds)
    doc = _skeleton(ckpt)
    group = doc["optimizer"]["param_groups"][-1]
    if value is None:
        del group["momentum"]
    else:
        group["momentum"] = value
    run = _run(seeds, "checkpoint", {"kind": "tree", "doc": doc}, tmp_path)
    assert run.result.exit_code == 2 and "momentum" in run.result.stderr


def test_a_group_setting_that_switches_the_optimizer_path_is_refused(seeds, tmp_path):
    """Found: a group's ``fused`` changed from None to a number (-1.8e16), with one
    parameter's momentum buffer deleted, passed the checks; torch's fused SGD step then
    raised (TypeError: expected Tensor as element 2 in argument 2, but got NoneType)."""
    ckpt, _ = _moment(seeds)
    doc = _skeleton(ckpt)
    group = doc["optimizer"]["param_groups"][1]
    del doc["optimizer"]["state"][group["params"][0]]["momentum_buffer"]
    group["fused"] = -1.8e16
    run = _run(seeds, "checkpoint", {"kind": "tree", "doc": doc}, tmp_path)
    assert run.result.exit_code == 2 and "fused" in run.result.stderr


def test_a_refused_image_is_one_line_without_the_decoders_warnings(seeds, tmp_path):
    """Found: a damaged TIFF (named .jpg) in a training folder was refused with its one line,
    followed by PIL's "warning: Tag data larger than file. Skipping tag 284" — two lines."""
    example = _damaged_tiff("test/cat/2.png", 608, "CMYK", (3, 3), ".jpg")
    run = _run(seeds, "image", example, tmp_path)
    assert run.result.exit_code == 2 and "cannot read image" in run.result.stderr


def test_a_refused_image_is_one_line_without_the_decoders_log_records(seeds, tmp_path, monkeypatch):
    """Found: a damaged TIFF (named .png) in a validation folder was refused with its one
    line, after PIL's *logged* error "More samples per pixel than can be decoded: 132",
    which Python's last-resort handler printed on stderr — two lines."""
    # as on the command line: no logging configured (pytest's capture handlers would take it)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    example = _damaged_tiff("val/cat/2.png", 68969, "RGBA", (1, 1), ".png")
    run = _run(seeds, "image", example, tmp_path)
    assert run.result.exit_code == 2 and "cannot read image" in run.result.stderr


def _model_doc(seeds) -> dict:
    """The seed model file's metadata, each JSON value decoded."""
    import json

    from tests.fuzz.targets import _metadata

    doc = {}
    for k, v in _metadata(seeds.run / "model.safetensors")[1].items():
        try:
            doc[k] = json.loads(v)
        except ValueError:  # a plain string value
            doc[k] = v
    return doc


def test_a_model_whose_mean_has_two_values_is_refused_in_one_line(seeds, tmp_path):
    """Found: a model file's metadata with ``input_config.mean`` (and ``std``) of two values
    passed the metadata checks and failed building the transform (ValueError, exit 1)."""
    doc = _model_doc(seeds)
    doc["config"]["input_config"]["mean"] = [0.485, 0.406]
    doc["config"]["input_config"]["std"] = [0.229, 0.224]
    example = {"where": "safetensors", "edit": {"doc": doc, "raw": None}, "command": "predict"}
    run = _run(seeds, "metadata", example, tmp_path)
    assert run.result.exit_code == 2 and "input_config" in run.result.stderr


@pytest.mark.parametrize(
    "field, value",
    [
        ("backbone.model_kwargs", "787"),  # found: JSON, but no mapping (TypeError, exit 1)
        ("backbone.model_kwargs", "[1, 2]"),
        ("backbone.model_kwargs", "not json"),
        ("backbone.num_classes", "99999999999"),  # a classifier of 10^11 rows (RuntimeError)
        ("num_classes", 10**11),
    ],
    ids=["number", "list", "text", "huge-backbone-head", "huge-head"],
)
def test_a_model_whose_architecture_metadata_is_damaged_is_refused_in_one_line(
    seeds, tmp_path, field, value
):
    """Found: ``config.backbone.model_kwargs`` edited from ``'{}'`` to ``'787'`` passed the
    metadata checks; rebuilding the architecture then raised ``TypeError: 'int' object is
    not a mapping`` (exit 1). A class count of 10^11 failed the same way (a RuntimeError)."""
    doc = _model_doc(seeds)
    *parents, key = field.split(".")
    section = doc["config"]
    for name in parents:
        section = section[name]
    section[key] = value
    example = {"where": "safetensors", "edit": {"doc": doc, "raw": None}, "command": "predict"}
    run = _run(seeds, "metadata", example, tmp_path)
    assert run.result.exit_code == 2 and f"config.{field}" in run.result.stderr


def test_an_image_too_elongated_to_resize_is_refused_in_one_line(seeds, tmp_path):
    """Found: a damaged 1-bit TIFF (named .jpg) in a test folder decoded as a 1-pixel-wide
    strip; resizing its shorter side to the model's size overflowed PIL (OverflowError: signed
    integer is greater than maximum, a traceback, exit 1)."""
    example = _damaged_tiff("test/cat/5.png", 342, "1", (1, 1), ".jpg")
    run = _run(seeds, "image", example, tmp_path)
    assert run.result.exit_code == 2 and "5.jpg" in run.result.stderr


def test_a_set_value_with_a_nul_byte_reaches_the_command(seeds, tmp_path):
    """Found (a harness error, not nctune's): the campaign's cost check stat-ed a
    ``data.path`` holding a NUL byte (ValueError: embedded null byte) before the command
    ran. nctune itself refuses such a path in one line."""
    run = _run(seeds, "set", ["data.source=imagefolder", "data.path==\x08*\x00¶"], tmp_path)
    assert run.result.exit_code == 2 and "data.path" in run.result.stderr
