"""Library inference: load_finetuned carries what predict needs, and reproduces the run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nctune
from nctune.data import build_data, eval_transform, list_images
from nctune.errors import DataError
from nctune.runs.artifacts import load_finetuned as load_run_model
from nctune.serving.inference import expand_inputs, predict


def _labelled_test_files(data: Path) -> tuple[list[str], list[str]]:
    files = list_images(data / "test")
    return files, [Path(f).parent.name for f in files]


def test_saved_input_config_is_the_runs_own_and_alone_reproduces_test_accuracy(tiny_runs):
    run = tiny_runs("scl")
    model = load_run_model(run.run_dir)
    # data.image_size: 32 overrides resnet10t's 224: the saved config says 32
    assert model.input_config.image_size == 32
    files, truth = _labelled_test_files(run.data)
    # the reloaded model and its saved config alone: no recipe, no nctune.data datasets
    x = torch.stack([model.transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = sum(model.classes[i] == t for i, t in zip(pred.tolist(), truth, strict=True)) / len(files)
    assert acc == run.report["test_accuracy"]
    # the backbone default (what was saved before) preprocesses differently
    wrong = eval_transform(dataclasses.replace(model.input_config, image_size=224))
    assert wrong(Image.open(files[0])).shape[-1] == 224


def test_predict_reproduces_the_reported_test_accuracy_exactly(tiny_runs):
    run = tiny_runs("scl")
    model = nctune.load_finetuned(run.run_dir)
    files, truth = _labelled_test_files(run.data)
    preds = model.predict(files, batch_size=5)
    assert len(preds) == len(files) and not preds.failed
    acc = sum(p == t for p, t in zip(preds.labels, truth, strict=True)) / len(files)
    assert acc == run.report["test_accuracy"]
    # the same transform as the run's test split, tensor for tensor
    recipe = nctune.load_recipe(run.run_dir / "recipe.yaml")
    test = build_data(recipe.data, model.input_config, seed=recipe.seed).test
    assert torch.equal(model.transform(Image.open(test.paths[0])), test[0][0])
    # probabilities are a softmax; top-k is sorted and starts with the label
    p = model.predict(files[:3], top_k=3)
    for row in p:
        probs = [q for _, q in row.top_k]
        assert row.top_k[0] == (row.label, row.probability)
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)


def test_predict_takes_pil_images_pixel_tensors_and_preprocessed_batches(tiny_runs):
    run = tiny_runs("scl")
    model = nctune.load_finetuned(run.run_dir)
    files, _ = _labelled_test_files(run.data)
    by_path = predict(model, files[:4])
    pil = [Image.open(f).convert("RGB") for f in files[:4]]
    assert predict(model, pil).labels == by_path.labels
    pixels = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in pil]
    assert predict(model, pixels).labels == by_path.labels
    batch = torch.stack([model.transform(im) for im in pil])
    assert predict(model, batch).probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    assert predict(model, files[0]).labels == by_path.labels[:1]
    assert by_path.to_dict()["num_failed"] == 0


def test_a_corrupt_image_fails_its_row_only(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    files, _ = _labelled_test_files(run.data)
    bad = tmp_path / "bad.png"
    bad.write_bytes(Path(files[0]).read_bytes()[:60])  # a truncated PNG
    preds = nctune.predict(nctune.load_finetuned(run.run_dir), [files[0], bad, files[1]])
    assert [p.ok for p in preds] == [True, False, True]
    assert "bad.png" in preds[1].error and preds[1].label is None
    assert len(preds.failed) == 1


def test_expand_inputs_files_folders_and_manifests(tmp_path, tiny_runs):
    data = tiny_runs("linear").data
    test_files = list_images(data / "test")
    manifest = tmp_path / "m.csv"
    rows = ["path,label,split"] + [f"{f},{Path(f).parent.name},test" for f in test_files[:3]]
    rows += [f"{test_files[3]},x,train", "missing.png,x,test"]
    manifest.write_text("\n".join(rows) + "\n")
    assert expand_inputs([data / "test"]) == test_files
    assert expand_inputs([manifest], split="test") == [
        *test_files[:3],
        str(tmp_path / "missing.png"),
    ]
    assert len(expand_inputs([manifest, test_files[0]])) == 6
    with pytest.raises(DataError, match="no images"):
        (tmp_path / "empty").mkdir()
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(DataError, match="no such file"):
        expand_inputs([tmp_path / "nope.png"])
    with pytest.raises(DataError, match="no images to predict"):
        expand_inputs([])
