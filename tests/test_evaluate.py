"""nctune.evaluate: every metric equals scikit-learn's on the same images and logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nctune
from nctune.data import list_images, open_image
from nctune.errors import ConfigError, DataError
from nctune.serving.evaluate import Evaluation, evaluate, scores_from_confusion

# top-k with k = the number of classes is 1 by definition: scikit-learn warns, nctune caps k
pytestmark = pytest.mark.filterwarnings("ignore:.k. .3. greater than or equal")


def _reference(run, split="test"):
    """(y_true, probabilities) computed here, without nctune's evaluation or predict code."""
    model = nctune.load_finetuned(run.run_dir)
    ys, xs = [], []
    for k, name in enumerate(model.classes):
        for f in list_images(run.data / split / name):
            xs.append(model.transform(open_image(f)))
            ys.append(k)
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack(xs)), dim=1).numpy()
    return np.asarray(ys), probs


def _check_against_sklearn(res: Evaluation, y, probs, k: int):
    # The test extra installs scikit-learn; imported here, not at collection, where every
    # xdist worker would pay its 1.5 s for the one that runs these tests.
    metrics = pytest.importorskip("sklearn.metrics")
    pred = probs.argmax(1)
    labels = list(range(probs.shape[1]))
    assert res.num_images == len(y) and res.num_failed == 0
    assert res.accuracy == pytest.approx(metrics.accuracy_score(y, pred), abs=1e-12)
    want_topk = metrics.top_k_accuracy_score(y, probs, k=k, labels=labels)
    assert res.top_k == k and res.top_k_accuracy == pytest.approx(want_topk, abs=1e-12)
    assert res.confusion == metrics.confusion_matrix(y, pred, labels=labels).tolist()
    report = metrics.classification_report(y, pred, output_dict=True, zero_division=0)
    for i, row in enumerate(res.per_class):
        ref = report.get(str(i), {"precision": 0, "recall": 0, "f1-score": 0, "support": 0})
        assert row.name == res.classes[i] and row.support == ref["support"]
        assert (row.precision, row.recall, row.f1) == pytest.approx(
            (ref["precision"], ref["recall"], ref["f1-score"]), abs=1e-12
        )
    for mine, theirs in ((res.macro, "macro avg"), (res.weighted, "weighted avg")):
        ref = report[theirs]
        assert (mine["precision"], mine["recall"], mine["f1"]) == pytest.approx(
            (ref["precision"], ref["recall"], ref["f1-score"]), abs=1e-12
        )


@pytest.mark.parametrize("top_k", [1, 2])
def test_own_test_split_matches_sklearn_and_the_reported_accuracy(tiny_runs, top_k):
    run = tiny_runs("scl")
    res = nctune.evaluate(run.run_dir, top_k=top_k)
    assert res.split == "test" and res.data == "split:test"
    y, probs = _reference(run)
    _check_against_sklearn(res, y, probs, top_k)
    assert res.accuracy == pytest.approx(run.report["test_accuracy"], abs=1e-12)


def test_folder_and_manifest_agree_and_top_k_is_capped(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    y, probs = _reference(run, "val")
    res = evaluate(run.run_dir, run.data / "val", top_k=5)  # 3 classes: top-3
    _check_against_sklearn(res, y, probs, 3)
    assert res.top_k_accuracy == 1.0
    # the data set's root: its val folder is picked by split; a manifest gives the same
    assert evaluate(run.run_dir, run.data, split="val").confusion == res.confusion
    manifest = tmp_path / "m.csv"
    rows = [f"{f},{c}" for c in ("ant", "bee", "cat") for f in list_images(run.data / "val" / c)]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert evaluate(run.run_dir, [manifest]).confusion == res.confusion


def test_a_subset_of_classes_averages_over_the_present_ones(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    (tmp_path / "bee").symlink_to(run.data / "test" / "bee")
    res = evaluate(run.run_dir, tmp_path)
    y, probs = _reference(run)
    keep = y == 1
    _check_against_sklearn(res, y[keep], probs[keep], 3)
    assert [c.support for c in res.per_class] == [0, 6, 0]


def test_scores_from_confusion_by_hand():
    per_class, macro, weighted = scores_from_confusion(np.array([[3, 1], [0, 0]]), ["a", "b"])
    assert (per_class[0].precision, per_class[0].recall, per_class[0].support) == (1.0, 0.75, 4)
    assert (per_class[1].precision, per_class[1].recall, per_class[1].f1) == (0.0, 0.0, 0.0)
    assert macro["recall"] == pytest.approx(0.375) and weighted["recall"] == pytest.approx(0.75)


def test_out_gets_the_json_and_the_confusion_png(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    res = evaluate(run.run_dir, split="val", out=tmp_path / "ev")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "confusion.png",
        "evaluation.json",
    ]
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert doc == json.loads(json.dumps(res.to_dict()))
    assert (tmp_path / "ev" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_confusion_figure_shows_the_counts():
    from nctune.report.evaluation import confusion_figure

    res = Evaluation(
        run="r", data="d", split=None, classes=["a", "b"], num_images=5, num_failed=0,
        accuracy=0.8, top_k=1, top_k_accuracy=0.8, per_class=[], macro={}, weighted={},
        confusion=[[3, 1], [0, 1]],
    )  # fmt: skip
    ax = confusion_figure(res).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "1", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.get_ylabel() == "true class" and "80.0 %" in ax.get_title()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 0}, ConfigError, "top_k"),
        ({"split": "dev"}, ConfigError, "split"),
        ({"data": "__FILE__"}, DataError, "has no label"),
        ({"data": "__FLAT__"}, DataError, "no class folders"),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny_runs, tmp_path, kwargs, error, match):
    run = tiny_runs("linear")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((run.data / "test" / "ant" / "0.png").read_bytes())
    paths = {"__FILE__": flat / "a.png", "__FLAT__": flat}
    kwargs = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        evaluate(run.run_dir, **kwargs)


def test_an_in_memory_model_needs_data(tiny_runs):
    model = nctune.load_finetuned(tiny_runs("linear").run_dir)
    with pytest.raises(ConfigError, match="data"):
        evaluate(model)
