"""The fuzz targets: for each, a valid seed, the mutations drawn from it and the command run
on the result. Shared by the bounded suite (tests/fuzz/test_fuzz.py) and the long campaign
(benchmarks/fuzz.py).

Each example works in its own temporary folder and is cheap: most mutations are refused
at validation; one that validates and is affordable (:func:`affordable`) runs the tiniest
recipe (a random-init ``timm:test_resnet`` at 32 px, 100 vendored images, one epoch).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import assume, currently_in_test_context
from hypothesis import strategies as st

from tests.fuzz.contract import Run, run_command
from tests.fuzz.mutations import differences, mutated, scalars, text_edit, values

#: The seed recipe: valid, and as cheap as a real run gets.
SEED: dict[str, Any] = {
    "backbone": {"name": "timm:test_resnet", "pretrained": False},
    "data": {
        "subset": "vendored",
        "samples_per_class": 10,
        "val_fraction": 0.1,
        "max_test_samples": 20,
        "image_size": 32,
        "batch_size": 32,
    },
    "strategy": {"name": "linear"},
    "train": {"epochs": 1, "lr": 0.01, "profile_after": False},
    "seed": 0,
    "device": "cpu",
}
#: The seed's search: one cheap parameter of each kind.
SEED_SPACE: dict[str, Any] = {
    "train.lr": {"float": [0.001, 0.1], "log": True},
    "train.weight_decay": {"choice": [0.0, 0.01]},
    "train.warmup_epochs": {"int": [0, 1]},
}
#: A run's cost grows with these; a mutation that validates beyond them is not run.
CHEAP_KEYS = ("train.epochs", "data.image_size", "data.samples_per_class", "strategy.probe_epochs")
FINETUNE_KEEPS = ("checkpoint.pt", "metrics.csv", "recipe.yaml")
FIELDS: list[str] = []


def field_keys() -> list[str]:
    """Every recipe field's dotted path (what ``--set`` takes)."""
    if not FIELDS:
        from nctune.recipe_fields import field_rows

        FIELDS.extend(f"{r.section}.{r.name}" if r.section else r.name for r in field_rows())
    return FIELDS


def _require(ok: bool) -> None:
    """hypothesis's ``assume`` in a property test; outside one (a found example replayed as a
    plain test, where ``assume`` is deprecated) an unaffordable example is an error."""
    if currently_in_test_context():
        assume(ok)
    elif not ok:
        raise AssertionError("the example is beyond the fuzz targets' cost bound")


def affordable(root: Path, recipe_file: Path | None, sets: list[str]) -> None:
    """``assume`` the run is cheap when the recipe validates (a refusal always is): the
    seed's backbone, data and device, few epochs, small images, no loader processes, and
    no folder outside the example's own read as data."""
    from nctune.config import load_recipe

    try:
        r = load_recipe(recipe_file, sets)
    except Exception:
        return
    d, t, s = r.data, r.train, r.strategy
    _require(r.backbone.name in ("timm:test_resnet", "timm:resnet10t"))
    _require(not r.backbone.pretrained and r.backbone.weights is None)
    _require((d.source == "fashion_mnist" and d.subset == "vendored") or d.source == "imagefolder")
    _require(not d.download)  # nothing fetched: a hub would wait ~47 s before failing
    # a path with a NUL byte names no file (os.stat raises ValueError on it): nothing is read
    outside = d.path is not None and "\0" not in str(d.path) and Path(d.path).exists()
    _require(not outside or root in Path(d.path).resolve().parents)
    big = 10**9  # an unset size or count: the backbone's default, or every image
    _require((t.epochs or big) <= 2 and (d.image_size or big) <= 64)
    _require((d.samples_per_class or big) <= 20 and (d.batch_size or 0) >= 4)
    _require(not d.num_workers and r.device in ("cpu", "auto"))
    _require(s.name not in ("lora",) and (getattr(s, "probe_epochs", 1) or 1) <= 2)
    _require(not getattr(t, "lr_finder", False) and not getattr(s, "lr_finder", False))
    _require(not t.tensorboard and (r.threads or 1) <= 2)


@dataclass
class Target:
    """A fuzz target: ``examples(seeds)`` draws an example, ``run(seeds, ex, tmp)`` runs the
    command on it in ``tmp`` and returns what the contract checks."""

    name: str
    examples: Callable[[Seeds], st.SearchStrategy[Any]]
    run: Callable[[Seeds, Any, Path], Run]


@dataclass
class Seeds:
    """Valid inputs to mutate, built once: a finished tiny run (``run``, its image folder
    ``images``), and a run folder holding an epoch-1 checkpoint of a two-epoch run
    (``halfway``) with the ``--set`` overrides that resume it (``halfway_sets``)."""

    root: Path
    run: Path
    images: Path
    halfway: Path
    halfway_sets: list[str]


def _write_recipe(tmp: Path, doc: Any, text_mutation: str | None) -> Path:
    path = tmp / "recipe.yaml"
    text = text_mutation if text_mutation is not None else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return json.dumps(doc)


# ---------------------------------------------------------------- recipe (YAML) → finetune
@st.composite
def _recipe_examples(draw, seeds: Seeds) -> dict:
    doc = draw(mutated(SEED))
    edits = differences(SEED, doc)
    text = None
    if draw(st.integers(0, 4)) == 0:  # now and then the text itself is damaged
        text = draw(text_edit(_dump(doc)))
    return {"edits": edits, "doc": doc, "text": text}


def _recipe_run(seeds: Seeds, ex: dict, tmp: Path) -> Run:
    path = _write_recipe(tmp, ex["doc"], ex["text"] if ex["text"] is not None else _dump(ex["doc"]))
    affordable(tmp, path, [])
    out = tmp / "out"
    return run_command(
        ["finetune", "-q", path, "--out", out],
        inputs=[path],
        out=out,
        allow_on_refusal=FINETUNE_KEEPS,
        required=("report.json", "model.safetensors"),
    )


# ---------------------------------------------------------------- --set values → finetune
def _seed_sets() -> list[str]:
    out = []

    def flat(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                flat(f"{prefix}.{k}" if prefix else k, x)
        else:
            out.append(f"{prefix}={json.dumps(v)}")

    flat("", SEED)
    return out


#: Values some field takes (a --set of one on the right field runs the recipe).
PLAUSIBLE = [
    "0",
    "1",
    "2",
    "0.5",
    "0.001",
    "true",
    "false",
    "null",
    "sgd",
    "adamw",
    "cosine",
    "full",
    "layers",
    "scl",
    "[layer1.0]",
    "auto",
    "mean",
]


@st.composite
def _set_examples(draw, seeds: Seeds) -> list[str]:
    extra = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(
            st.one_of(
                st.sampled_from(field_keys()),
                st.sampled_from(["", ".", "train.", "train..lr", "train.lr.x", "Train.lr", "x"]),
                st.text(max_size=10),
            )
        )
        value = draw(
            st.one_of(
                st.sampled_from(PLAUSIBLE),  # often valid somewhere: those runs run
                st.just(_dump(draw(values())).strip().removesuffix("...").strip()),
                st.text(max_size=16),
                st.sampled_from(["", "[", "{", "nan", "1e999", "-0", "0x10", "~", "!!binary aGk="]),
            )
        )
        form = draw(st.sampled_from([f"{key}={value}"] * 4 + [key, f"{key}=={value}"]))
        extra.append(form)
    return extra


def _set_run(seeds: Seeds, ex: list[str], tmp: Path) -> Run:
    sets = [*_seed_sets(), *ex]
    affordable(tmp, None, sets)
    out = tmp / "out"
    args: list[Any] = ["finetune", "-q"]
    for s in sets:
        args += ["--set", s]
    return run_command(
        [*args, "--out", out],
        inputs=[],
        out=out,
        allow_on_refusal=FINETUNE_KEEPS,
        required=("report.json", "model.safetensors"),
    )


# ---------------------------------------------------------------- search spaces → tune
SPACE_KEYS = [
    "train.lr",
    "train.weight_decay",
    "train.warmup_epochs",
    "train.label_smoothing",
    "train.optimizer",
    "train.momentum",
    "strategy.head_dropout",
    "strategy.layers",
    "seed",
    "trian.lr",
    "train",
    "",
]


@st.composite
def _space_examples(draw, seeds: Seeds) -> dict:
    space = draw(mutated(SEED_SPACE))
    if isinstance(space, dict) and draw(st.booleans()):  # a parameter under another name
        key = draw(st.sampled_from(SPACE_KEYS))
        space[key] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        draw(
                            st.sampled_from(["float", "int", "choice", "blocks_from_profile"])
                        ): values()
                    },
                    optional={"log": scalars(), "step": scalars()},
                ),
                values(),
            )
        )
    search: dict[str, Any] = {"space": space}
    if draw(st.integers(0, 3)) == 0:
        search["sampler"] = draw(st.sampled_from(["tpe", "random", "grid", "bogus", 3]))
    return search


def _space_run(seeds: Seeds, ex: dict, tmp: Path) -> Run:
    doc = {**SEED, "search": ex}
    path = _write_recipe(tmp, doc, _dump(doc))
    affordable(tmp, path, [])
    out = tmp / "search"
    return run_command(
        ["tune", "-q", path, "--trials", "1", "--out", out],
        inputs=[path],
        out=out,
        required=("search.json", "best.yaml"),
    )


# ---------------------------------------------------------------- run metadata → predict, export
def _metadata(model: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors.torch import load_file, safe_open

    with safe_open(str(model), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(model)), meta


@st.composite
def _metadata_examples(draw, seeds: Seeds) -> dict:
    _, meta = _metadata(seeds.run / "model.safetensors")
    decoded = {}
    for k, v in sorted(meta.items()):  # safetensors hands the metadata in no fixed order
        try:
            decoded[k] = json.loads(v)
        except ValueError:
            decoded[k] = v
    where = draw(st.sampled_from(["safetensors", "safetensors", "safetensors", "recipe", "report"]))
    if where == "safetensors":
        doc = draw(mutated(decoded))
        where_edits = differences(decoded, doc)
        raw = None
        if draw(st.integers(0, 5)) == 0 and isinstance(doc, dict) and doc:  # a value's JSON damaged
            key = draw(st.sampled_from(sorted(doc)))
            raw = (key, draw(text_edit(json.dumps(doc[key]))))
        edit = {"edits": where_edits, "doc": doc, "raw": raw}
    elif where == "recipe":
        text = (seeds.run / "recipe.yaml").read_text(encoding="utf-8")
        edit = {
            "text": draw(
                st.one_of(text_edit(text), st.just(_dump(draw(mutated(yaml.safe_load(text))))))
            )
        }
    else:
        report = json.loads((seeds.run / "report.json").read_text(encoding="utf-8"))
        edit = {"text": json.dumps(draw(mutated(report)))}
    return {
        "where": where,
        "edit": edit,
        "command": draw(st.sampled_from(["predict", "predict", "export"])),
    }


def _metadata_run(seeds: Seeds, ex: dict, tmp: Path) -> Run:
    from safetensors.torch import save_file

    run = tmp / "run"
    shutil.copytree(seeds.run, run)
    images = tmp / "images"
    shutil.copytree(seeds.images / "test" / "ant", images)
    edit = ex["edit"]
    if ex["where"] == "safetensors":
        tensors, _ = _metadata(run / "model.safetensors")
        doc = edit["doc"]
        meta = (
            {str(k): json.dumps(v) if not isinstance(v, str) else v for k, v in doc.items()}
            if isinstance(doc, dict)
            else {"nctune_config": json.dumps(doc)}
        )
        if edit["raw"] is not None:
            meta[str(edit["raw"][0])] = edit["raw"][1]
        save_file(tensors, str(run / "model.safetensors"), metadata=meta)
    else:
        name = "recipe.yaml" if ex["where"] == "recipe" else "report.json"
        (run / name).write_text(edit["text"], encoding="utf-8", errors="surrogatepass")
    out = tmp / "out"
    out.mkdir()
    if ex["command"] == "predict":
        args = ["predict", run, images, "--out", out / "rows.jsonl", "--device", "cpu"]
        required: tuple[str, ...] = ("rows.jsonl",)
    else:
        args = ["export", run, "--format", "torchscript", "--out", out / "model.pt"]
        args += ["--images", images]
        required = ("model.pt",)
    return run_command(args, inputs=[run, images], out=out, required=required)


# ---------------------------------------------------------------- checkpoints → finetune --resume
@st.composite
def _checkpoint_examples(draw, seeds: Seeds) -> dict:
    import torch

    ckpt = torch.load(seeds.halfway / "checkpoint.pt", weights_only=True)
    kind = draw(st.sampled_from(["tree", "tree", "tensor", "bytes"]))
    if kind == "bytes":
        return {"kind": kind, "ops": draw(st.integers(0, 2**32 - 1))}
    if kind == "tree":  # tensors are left alone by the tree edits; "tensor" edits them
        skeleton = _skeleton(ckpt)
        doc = draw(mutated(skeleton, protect=(("model",), ("best_state",))))
        return {"kind": kind, "edits": differences(skeleton, doc), "doc": doc}
    part = draw(st.sampled_from(["model", "best_state", "optimizer"]))
    names = sorted(_tensor_paths(ckpt.get(part), (part,)))
    path = draw(st.sampled_from(names))
    how = draw(st.sampled_from(["nan", "inf", "scale", "shape", "dtype", "drop", "zero"]))
    return {"kind": kind, "path": path, "how": how}


def _skeleton(v: Any) -> Any:
    """A checkpoint's document with each tensor as a marker (hypothesis draws cannot hold
    the real tensors by reference); :func:`_fill` puts them back."""
    import torch

    if isinstance(v, torch.Tensor):
        return {"__tensor__": True}
    if isinstance(v, dict):
        return {k: _skeleton(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_skeleton(x) for x in v]
    return v


def _fill(skel: Any, real: Any) -> Any:
    if isinstance(skel, dict) and skel.get("__tensor__") is True and len(skel) == 1:
        return real if real is not None and hasattr(real, "shape") else skel
    if isinstance(skel, dict):
        return {
            k: _fill(x, real.get(k) if isinstance(real, dict) else None) for k, x in skel.items()
        }
    if isinstance(skel, list):
        seq = real if isinstance(real, (list, tuple)) else []
        out = [_fill(x, seq[i] if i < len(seq) else None) for i, x in enumerate(skel)]
        return tuple(out) if isinstance(real, tuple) else out
    return skel


def _tensor_paths(v: Any, prefix: tuple) -> list[tuple]:
    import torch

    if isinstance(v, torch.Tensor):
        return [prefix]
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _tensor_paths(x, (*prefix, k))]
    if isinstance(v, (list, tuple)):
        return [p for i, x in enumerate(v) for p in _tensor_paths(x, (*prefix, i))]
    return []


def _checkpoint_run(seeds: Seeds, ex: dict, tmp: Path) -> Run:
    import random

    import torch

    run = tmp / "run"
    shutil.copytree(seeds.halfway, run)
    path = run / "checkpoint.pt"
    if ex["kind"] == "bytes":
        rnd = random.Random(ex["ops"])
        data = bytearray(path.read_bytes())
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(data))
            op = rnd.choice(["flip", "truncate", "zero"])
            if op == "flip":
                data[i] ^= 1 << rnd.randrange(8)
            elif op == "truncate":
                del data[i:]
                if not data:
                    break
            else:
                data[i : i + 64] = bytes(len(data[i : i + 64]))
        path.write_bytes(bytes(data))
    else:
        ckpt = torch.load(path, weights_only=True)
        if ex["kind"] == "tree":
            ckpt = _fill(ex["doc"], ckpt)
        else:
            *parent_path, key = ex["path"]
            parent = ckpt
            for k in parent_path:
                parent = parent[k]
            t = parent[key]
            how = ex["how"]
            if how == "drop":
                del parent[key]
            elif how in ("nan", "inf") and t.is_floating_point() and t.numel():
                t.view(-1)[0] = float(how)
            elif how == "scale" and t.is_floating_point():
                parent[key] = t * 1e30
            elif how == "shape":
                parent[key] = torch.zeros(3, 1)
            elif how == "dtype":
                parent[key] = t.to(torch.int64) if t.is_floating_point() else t.double()
            else:
                parent[key] = torch.zeros_like(t)
        torch.save(ckpt, path)
    args: list[Any] = ["finetune", "-q"]
    for s in seeds.halfway_sets:
        args += ["--set", s]
    return run_command(
        [*args, "--resume", run],
        inputs=[],
        out=run,
        required=("report.json", "model.safetensors"),
    )


# ---------------------------------------------------------------- image bytes → predict, finetune
@st.composite
def _image_examples(draw, seeds: Seeds) -> dict:
    files = sorted(p.relative_to(seeds.images) for p in seeds.images.rglob("*.png"))
    victim = draw(st.sampled_from(files))
    fmt = draw(st.sampled_from(["png", "png", "jpeg", "gif", "tiff", "bmp"]))
    return {
        "file": str(victim),
        "format": fmt,
        "edit": draw(st.integers(0, 2**32 - 1)),
        "bytes": draw(st.booleans()),
        "mode": draw(st.sampled_from(["RGB", "L", "RGBA", "I;16", "P", "1", "CMYK", "F"])),
        "size": draw(st.sampled_from([(40, 48), (1, 1), (1, 500), (3, 3)])),
        "command": draw(st.sampled_from(["predict", "predict", "predict", "finetune"])),
        "ext": draw(st.sampled_from([".png", ".png", ".jpg", ".PNG", ".txt"])),
    }


def _image_run(seeds: Seeds, ex: dict, tmp: Path) -> Run:
    import io
    import random

    import numpy as np
    from PIL import Image

    images = tmp / "images"
    shutil.copytree(seeds.images, images)
    victim = images / ex["file"]
    rnd = random.Random(ex["edit"])
    with Image.open(victim) as im:
        im = im.convert("RGB").resize(ex["size"])
    try:
        if ex["mode"] == "I;16":
            im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)
        elif ex["mode"] == "F":
            im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.float32) * 1e30)
        else:
            im = im.convert(ex["mode"])
        buf = io.BytesIO()
        im.save(buf, format=ex["format"].upper())
        data = buf.getvalue()
    except (OSError, ValueError, KeyError):  # PIL cannot write this mode in that format
        data = victim.read_bytes()
    if ex["bytes"] and data:
        data = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(data))
            op = rnd.choice(["flip", "truncate", "zero", "insert"])
            if op == "flip":
                data[i] ^= 1 << rnd.randrange(8)
            elif op == "truncate":
                del data[i:]
                if not data:
                    break
            elif op == "zero":
                data[i : i + 32] = bytes(len(data[i : i + 32]))
            else:
                data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        data = bytes(data)
    victim.unlink()
    victim.with_suffix(ex["ext"]).write_bytes(data)
    out = tmp / "out"
    if ex["command"] == "predict":
        out.mkdir()
        args = ["predict", seeds.run, images / "test", "--out", out / "rows.jsonl"]
        return run_command(
            [*args, "--device", "cpu"],
            inputs=[images, seeds.run],
            out=out,
            required=("rows.jsonl",),
        )
    sets = [
        "backbone.name=timm:test_resnet",
        "backbone.pretrained=false",
        "data.source=imagefolder",
        f"data.path={images}",
        "data.image_size=32",
        "data.batch_size=32",
        "train.epochs=1",
        "strategy.name=linear",
        "train.profile_after=false",
        "device=cpu",
    ]
    args = ["finetune", "-q"]
    for s in sets:
        args += ["--set", s]
    return run_command(
        [*args, "--out", out],
        inputs=[images],
        out=out,
        allow_on_refusal=FINETUNE_KEEPS,
        required=("report.json", "model.safetensors"),
    )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("recipe", _recipe_examples, _recipe_run),
        Target("set", _set_examples, _set_run),
        Target("space", _space_examples, _space_run),
        Target("metadata", _metadata_examples, _metadata_run),
        Target("checkpoint", _checkpoint_examples, _checkpoint_run),
        Target("image", _image_examples, _image_run),
    )
}


# ---------------------------------------------------------------- the seeds, built once
HALFWAY_SETS = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=10",
    "data.val_fraction=0.1",
    "data.max_test_samples=20",
    "data.image_size=32",
    "data.batch_size=32",
    "train.epochs=2",
    "train.lr=0.01",
    "strategy.name=full",
    "train.optimizer=sgd",
    "train.grad_clip=null",
    "train.profile_after=false",
    "device=cpu",
]


def build_seeds(root: Path) -> Seeds:
    """The finished tiny run (tests/runs.py) and an epoch-1 checkpoint of a two-epoch run
    (its second epoch made to diverge, so the run stops keeping the first one's)."""
    import importlib

    from tests.fuzz.contract import invoke
    from tests.runs import make_tiny_run

    tiny = make_tiny_run(root, "linear")
    train = importlib.import_module("nctune.training.train")
    real = train.lr_at

    def explodes_in_epoch_2(step, total, warmup, cfg, base_lr):  # 1 step an epoch here
        return 1e30 if step >= total // 2 else real(step, total, warmup, cfg, base_lr)

    halfway = root / "halfway"
    train.lr_at = explodes_in_epoch_2
    try:
        args: list[Any] = ["finetune", "-q"]
        for s in HALFWAY_SETS:
            args += ["--set", s]
        res = invoke([*args, "--out", halfway])
    finally:
        train.lr_at = real
    assert res.exit_code == 2 and (halfway / "checkpoint.pt").is_file(), res.output
    return Seeds(root, tiny.run_dir, tiny.data, halfway, HALFWAY_SETS)
