"""Which backbone to start from: rank candidates by scores measured before any training.

The paper's first finding (Li et al., arXiv 2212.12206): the more collapsed a pretrained
model's features already are on the downstream training data (lower NC1), the better it
transfers. ``rank`` measures that and the usual baselines for every candidate in **one
streaming pass** per backbone — the same pass as ``nctune analyze``:

    for each candidate:  backbone + data ──► profile_recipe (taps on every block + pre-logits)
        ├─ CollapseStats per block    ──► nc1, nc1_best (+ block), trace_ratio, cdnv, ncc
        └─ a seeded stratified subsample of the pre-logits features (train and val)
                                      ──► logme, hscore, knn        (nctune.scores)
    optionally:  finetune(candidate, strategy) ──► test accuracy ──► weighted τ, Spearman ρ

A candidate that fails to load or run becomes a failed row with its one-line reason; the
others are kept. The library never prints; ``nctune.report.rank`` renders the result.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from nctune.analyze import profile_recipe, profiled_train
from nctune.backbones import create_backbone
from nctune.config import BackboneConfig, Recipe, recipe_from_dict
from nctune.data import build_data, resolve_input_config
from nctune.errors import ArtifactError, BackboneError, ConfigError, NctuneError, one_line
from nctune.finetune import finetune
from nctune.rank_scores import Keep, add_ncti, feature_scores, finite, nc_scores, static_scores
from nctune.scores import SCORES, stratified_indices
from nctune.taps import resolve_device
from nctune.training.callbacks import LambdaCallback

#: A candidate spec ending in this suffix is the same architecture at random init.
RANDOM_SUFFIX = "@random"

#: What a candidate may raise and still leave the others to be ranked: bad weights or
#: names (BackboneError), a damaged ``file:`` run folder (ArtifactError), a model that
#: cannot run at the recipe's input size (torch's RuntimeError, timm's input-size
#: assertions), features the statistics refuse (CollapseError is a ValueError). Data and
#: recipe errors concern every candidate, so they propagate; so does anything else (a bug).
CANDIDATE_ERRORS = (BackboneError, ArtifactError, RuntimeError, AssertionError, ValueError)


def parse_candidate(text: str) -> tuple[str, bool]:
    """``'packaged:efficientnet_lite0@random'`` → ``('packaged:efficientnet_lite0', False)``.

    Args:
        text: a ``backbone.name`` spec, optionally ending in ``@random``.

    Returns:
        The spec without the suffix, and whether to load pretrained weights.

    Raises:
        ConfigError: nothing left before ``@random``.
    """
    text = text.strip()
    if text.endswith(RANDOM_SUFFIX):
        name = text[: -len(RANDOM_SUFFIX)].strip()
        if not name:
            raise ConfigError(f"rank.backbones: {text!r} names no model before '@random'")
        return name, False
    return text, True


@dataclass
class Candidate:
    """One row of the ranking.

    Attributes:
        spec: the candidate as given (``@random`` included).
        backbone: the backbone spec that was built.
        pretrained: whether pretrained weights were loaded.
        ok: False when the candidate failed to load or run.
        reason: the failure, one line (None when ok).
        scores: score name (see :data:`nctune.scores.SCORES`) → value (None when it could
            not be computed, e.g. NCC and k-NN without a validation split).
        best_block: the layer with the lowest NC1 (``nc1_best``).
        num_samples: training samples the NC scores streamed over.
        subsample: training features kept for LogME, H-score and k-NN.
        dim: width of the penultimate features.
        image_size: input side the candidate ran at.
        seconds: wall time per phase: ``load`` (backbone + data), ``pass`` (the streaming
            pass: train, then val), ``scores`` (LogME, H-scores, k-NN, static baselines),
            ``validate``; and the process's CPU time of the pass and the scores
            (``pass_cpu``, ``scores_cpu``).
        validation: the validation fine-tune (strategy, test and val accuracy, seconds,
            trainable parameters), or ``{"error": reason}``; None when not validated.
    """

    spec: str
    backbone: str
    pretrained: bool
    ok: bool = True
    reason: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    best_block: str | None = None
    num_samples: int | None = None
    subsample: int | None = None
    dim: int | None = None
    image_size: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    geometry: float | None = field(default=None, repr=False)

    def accuracy(self, metric: str) -> float | None:
        """The validation fine-tune's ``metric`` (None when not validated or failed)."""
        return None if self.validation is None else self.validation.get(metric)


@dataclass
class Ranking:
    """Every candidate's scores, the order by one of them, and (validated) which score was right.

    Attributes:
        candidates: one :class:`Candidate` per spec, in the order given.
        by: the score :meth:`ranked` sorts by.
        dataset: the data source.
        num_classes: K.
        subsample: the cap on features kept per split.
        knn_k: neighbours in the k-NN vote.
        validation: the fine-tuning strategy used to validate (None: not validated).
        metric: the accuracy the scores are checked against: ``test_accuracy``, or
            ``val_accuracy`` without a test split (None when not validated).
        agreement: score → ``{"weighted_tau", "spearman", "n"}``: Vigna's weighted Kendall
            τ (hyperbolic weights, scipy's ``weightedtau``) and Spearman's ρ between the
            score (oriented so that higher predicts better) and the measured accuracy over
            the ``n`` candidates that have both.
        seconds: wall time of the whole ranking.
    """

    candidates: list[Candidate]
    by: str
    dataset: str | None = None
    num_classes: int | None = None
    subsample: int = 0
    knn_k: int = 0
    validation: str | None = None
    metric: str | None = None
    agreement: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    seconds: float = 0.0

    def ranked(self, by: str | None = None) -> list[Candidate]:
        """Candidates best first by ``by`` (default :attr:`by`); unscored, then failed, last.

        Args:
            by: a score name.

        Returns:
            A new list; ties keep the given order.
        """
        by = by or self.by
        sign = 1.0 if SCORES[by] else -1.0

        def key(c: Candidate) -> tuple[int, float]:
            v = c.scores.get(by)
            if not c.ok:
                return (2, 0.0)
            return (1, 0.0) if v is None else (0, -sign * v)

        return sorted(self.candidates, key=key)

    def positions(self, by: str) -> dict[str, int]:
        """spec → 1-based place by score ``by``, for the candidates that have that score.

        Args:
            by: a score name.

        Returns:
            The places; candidates without the score (or failed) are absent, and all are
            when the score is the same for every candidate up to rounding (no order).
        """
        ranked = [c for c in self.ranked(by) if c.ok and c.scores.get(by) is not None]
        if len(ranked) > 1 and not _varies(np.array([c.scores[by] for c in ranked])):
            return {}
        return {c.spec: i + 1 for i, c in enumerate(ranked)}

    def to_dict(self) -> dict[str, Any]:
        """The ``ranking.json`` document.

        Returns:
            The fields, with ``candidates`` best first by :attr:`by` (each with its
            ``rank``, 1-based, None when failed) and ``higher_is_better`` per score.
        """
        rows = []
        for i, c in enumerate(self.ranked()):
            row = asdict(c)
            row["rank"] = i + 1 if c.ok else None
            rows.append(row)
        return {
            "by": self.by,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "subsample": self.subsample,
            "knn_k": self.knn_k,
            "validation": self.validation,
            "metric": self.metric,
            "higher_is_better": dict(SCORES),
            "agreement": self.agreement,
            "seconds": self.seconds,
            "candidates": rows,
        }


def _settings(
    recipe: Recipe, backbones: list[str] | None, by: str | None, validate: str | None
) -> Recipe:
    """The recipe with the call's arguments written into its ``rank`` section, validated."""
    data = recipe.model_dump(mode="json")
    changed = []
    for key, value in (("backbones", backbones), ("by", by), ("validation", validate)):
        if value is not None:
            data["rank"][key] = value
            changed.append(f"rank.{key}")
    return recipe_from_dict(data, "rank", frozenset(changed))


def _check_candidates(recipe: Recipe) -> list[tuple[str, str, bool]]:
    specs = recipe.rank.backbones
    if len(specs) < 2:
        raise ConfigError(
            f"rank.backbones: ranking needs at least two candidates (got {len(specs)}); "
            "pass --backbones A,B or list them under rank.backbones"
        )
    seen: set[str] = set()
    out = []
    for text in specs:
        name, pretrained = parse_candidate(text)
        key = f"{name}{'' if pretrained else RANDOM_SUFFIX}"
        if key in seen:
            raise ConfigError(f"rank.backbones: {text!r} is listed twice")
        seen.add(key)
        out.append((text, name, pretrained))
    if recipe.data.image_size is None:  # set, it is every candidate's side
        # Ranked images must be the same for every candidate. Input sizes do not depend on
        # the weights, so random-init builds answer quickly; a candidate that cannot even
        # be built is left to fail as its own row.
        sizes: dict[str, int] = {}
        for text, name, _ in out:
            try:
                backbone = create_backbone(name, pretrained=False)
            except CANDIDATE_ERRORS:
                continue
            sizes[text] = resolve_input_config(backbone.input_config, recipe.data).image_size
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{t} {s} px" for t, s in sizes.items())
            raise ConfigError(
                f"data.image_size: the candidates expect different input sizes ({listed}); "
                "set one so they are ranked on the same images, e.g. --set data.image_size=224"
            )
    return out


def _varies(v: np.ndarray) -> bool:
    return bool(np.ptp(v) > 1e-9 * max(float(np.max(np.abs(v))), 1e-300))


def _rank_correlations() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """scipy's (weightedtau, spearmanr); scipy is optional (the ``rank`` extra), so it is
    imported only when validating, and ``nctune rank`` without it starts light."""
    try:
        from scipy.stats import spearmanr, weightedtau
    except ImportError:
        raise ConfigError(
            'rank.validation: --validate needs scipy for the rank correlations: pip install "nctune[rank]"'
        ) from None
    return weightedtau, spearmanr


def _agreement(candidates: list[Candidate], metric: str) -> dict[str, dict[str, Any]]:
    weightedtau, spearmanr = _rank_correlations()
    out: dict[str, dict[str, Any]] = {}
    for name, higher in SCORES.items():
        pairs = [
            (c.scores[name] if higher else -c.scores[name], c.accuracy(metric))
            for c in candidates
            if c.ok and c.scores.get(name) is not None and c.accuracy(metric) is not None
        ]
        tau = rho = None
        if len(pairs) >= 2:
            x, y = (np.asarray(v, dtype=np.float64) for v in zip(*pairs, strict=True))
            # A side that is constant up to rounding (e.g. an H-score saturated at K − 1)
            # has no ranking to compare: its "order" would be float noise.
            if _varies(x) and _varies(y):
                tau = finite(float(weightedtau(x, y)[0]))
                rho = finite(float(spearmanr(x, y)[0]))
        out[name] = {"weighted_tau": tau, "spearman": rho, "n": len(pairs)}
    return out


def _score(
    row: Candidate, recipe: Recipe, device: torch.device, progress: Callable[..., None] | None
) -> tuple[str, int] | None:
    """One candidate's pass and scores into ``row`` (failing: ``ok`` False and its reason);
    returns the data's source name and class count once the data loaded, else None."""
    cfg, text = recipe.rank, row.spec
    labelled = (lambda p, d, t: progress(f"{text}: {p}", d, t)) if progress else None
    loaded = None
    t0 = time.perf_counter()
    try:
        torch.manual_seed(recipe.seed)  # a random-init candidate is the same in validation
        backbone = create_backbone(BackboneConfig(name=row.backbone, pretrained=row.pretrained))
        data_cfg = recipe.data.model_copy(update={"augment": False})
        splits = build_data(data_cfg, backbone.input_config, seed=recipe.seed)
        loaded = splits.source, splits.num_classes
        row.image_size = splits.image_size
        train_y = np.asarray(profiled_train(splits, recipe).targets)
        positions = {"train": stratified_indices(train_y, cfg.subsample, seed=recipe.seed)}
        if splits.val is not None:
            val_y = np.asarray(splits.val.targets)
            positions["val"] = stratified_indices(val_y, cfg.subsample, seed=recipe.seed)
        keep = Keep(positions)
        t1, c1 = time.perf_counter(), time.process_time()
        profile = profile_recipe(backbone, splits, recipe, device, labelled, features=keep)
        t2, c2 = time.perf_counter(), time.process_time()
        row.scores, row.best_block = nc_scores(profile)
        feats, row.geometry = feature_scores(keep, cfg.knn_k)
        row.scores.update(feats)
        row.scores.update(static_scores(row.backbone, row.pretrained, backbone))
        t3, c3 = time.perf_counter(), time.process_time()
    except CANDIDATE_ERRORS as err:
        row.ok, row.reason = False, one_line(err, 240)
        row.seconds["load"] = time.perf_counter() - t0
        return loaded
    finally:
        backbone = splits = keep = None  # free this candidate before the next loads
        gc.collect()
    row.num_samples, row.dim = profile.num_samples, profile.penultimate.dim
    row.subsample = len(positions["train"])
    row.seconds = {"load": t1 - t0, "pass": t2 - t1, "scores": t3 - t2}
    # CPU seconds of this process (all its threads): what a loaded machine cannot inflate
    row.seconds.update({"pass_cpu": c2 - c1, "scores_cpu": c3 - c2})
    return loaded


def rank(
    recipe: Recipe,
    backbones: list[str] | None = None,
    *,
    by: str | None = None,
    validate: str | None = None,
    progress: Callable[..., None] | None = None,
) -> Ranking:
    """Score every candidate backbone on the recipe's data and rank them.

    Per candidate, one streaming pass of :func:`~nctune.analyze.profile_recipe` over the
    training split (capped at ``analysis.max_samples``), then the validation split, gives
    every block's collapse statistics and keeps a seeded, class-stratified subsample of
    ``rank.subsample`` pre-logits features per split:

    - ``nc1``: 1/K tr(Σ_W Σ_B⁺) of the penultimate features (the paper's score);
      ``nc1_best``: the lowest NC1 over every tapped layer (and which one);
      ``trace_ratio`` = tr Σ_W / tr Σ_B; ``cdnv`` (Galanti et al.); lower is better;
    - ``ncc``: nearest-class-centre accuracy on the validation split;
    - ``logme``, ``hscore`` on the training subsample and ``knn`` (cosine, ``rank.knn_k``
      neighbours) of the validation subsample against it (:mod:`nctune.scores`).

    With ``validate``, every candidate that ran is fine-tuned by
    :func:`~nctune.finetune.finetune` with that strategy and the recipe's ``train``
    settings, and each score's weighted Kendall τ and Spearman ρ against the measured
    accuracy is reported.

    Args:
        recipe: data, analysis and train settings shared by all candidates; its
            ``backbone`` section is replaced by each candidate.
        backbones: candidate specs (``source:name``, ``@random`` for random init);
            default ``recipe.rank.backbones``.
        by: the score to sort by; default ``recipe.rank.by``.
        validate: a strategy name; default ``recipe.rank.validation``.
        progress: ``progress(phase, done, total)`` callback.

    Returns:
        The :class:`Ranking` (failed candidates included, with their reasons).

    Raises:
        ConfigError: fewer than two candidates, one listed twice, an unknown score or
            strategy, candidates that need different input sizes while
            ``data.image_size`` is unset, ``validate`` without scipy installed, or every
            validation fine-tune failing.
        DataError: the recipe's data cannot be loaded.
    """
    start = time.perf_counter()
    recipe = _settings(recipe, backbones, by, validate)
    cfg = recipe.rank
    candidates = _check_candidates(recipe)
    if cfg.validation is not None:
        _rank_correlations()  # a missing scipy fails now, not after every pass
    device = resolve_device(recipe.device)
    result = Ranking(
        [], cfg.by, subsample=cfg.subsample, knn_k=cfg.knn_k, validation=cfg.validation
    )
    for text, name, pretrained in candidates:
        row = Candidate(text, name, pretrained)
        result.candidates.append(row)
        loaded = _score(row, recipe, device, progress)
        if loaded is not None:
            result.dataset, result.num_classes = loaded
    add_ncti(result.candidates, {c.spec: c.geometry for c in result.candidates})

    if cfg.validation is not None:
        for row in (c for c in result.candidates if c.ok):
            run_recipe = recipe.model_copy(deep=True)
            run_recipe.backbone = BackboneConfig(name=row.backbone, pretrained=row.pretrained)
            run_recipe.strategy.name = cfg.validation
            run_recipe.train.profile_after = False
            labelled = progress and (
                lambda p, d, t, info="", s=row.spec: progress(f"{s}: {p}", d, t, info)
            )
            t0 = time.perf_counter()
            try:
                run = finetune(run_recipe, callbacks=LambdaCallback(on_progress=labelled))
            except (*CANDIDATE_ERRORS, NctuneError) as err:
                row.validation = {"strategy": cfg.validation, "error": one_line(err, 240)}
                continue
            finally:
                row.seconds["validate"] = time.perf_counter() - t0
            row.validation = {
                "strategy": run.strategy,
                "test_accuracy": run.test_accuracy,
                "val_accuracy": run.val_accuracy,
                "trainable_params": run.trainable_params,
                "wall_seconds": run.wall_seconds,
            }
            del run
            gc.collect()
        tried = [c for c in result.candidates if c.validation is not None]
        validated = [c for c in tried if "error" not in c.validation]
        if tried and not validated:  # nothing to check the scores against: no result
            raise ConfigError(
                f"rank.validation: every {cfg.validation} fine-tune failed ({len(tried)} "
                f"candidates); the first, {tried[0].spec}: {tried[0].validation['error']}"
            )
        has_test = any(c.validation.get("test_accuracy") is not None for c in validated)
        result.metric = "test_accuracy" if has_test else "val_accuracy"
        result.agreement = _agreement(result.candidates, result.metric)
    result.seconds = time.perf_counter() - start
    return result


__all__ = ["Candidate", "Ranking", "parse_candidate", "rank"]
