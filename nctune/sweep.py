"""Layer sweep: fine-tune each block on its own and see which choice the NC profile predicts.

"Which layer should I tune on my data?" is the question users ask most; the sweep answers it
by brute force, so the cheap answer (a selection rule on the one-pass profile) can be checked:

    profile (one pass) ──► every rule's pick
    for each block b:  Layer-FT(b) and SCL-FT(b) ──► test accuracy, trainable params, NC1 after

The result says, per rule, how far its pick lands from the best single block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from nctune import distributed as dist
from nctune.distributed import all_gather, local
from nctune.errors import ConfigError
from nctune.finetune import _profile, finetune, prepare
from nctune.selection import list_rules, select_layers

if TYPE_CHECKING:
    from nctune.config import Recipe

MODES = {"layer": "layers", "scl": "scl"}  # sweep mode → strategy name


@dataclass
class SweepPoint:
    """One fine-tuning run of the sweep.

    Attributes:
        block: the tuned block's module path.
        index: the block's position in the sweep (0 = shallowest).
        mode: ``'layer'`` (Layer-FT) or ``'scl'`` (SCL-FT).
        test_accuracy, val_accuracy: the run's accuracies (None without that split).
        trainable_params, total_params: the run's parameter counts.
        nc1_before: NC1 of the block's features before tuning (from the profile).
        nc1_after: NC1 of the head's input after tuning.
        wall_seconds: the run's training time.
    """

    block: str
    index: int
    mode: str  # "layer" (Layer-FT) or "scl" (SCL-FT)
    test_accuracy: float | None
    val_accuracy: float | None
    trainable_params: int
    total_params: int
    nc1_before: float | None  # NC1 of the block's features before tuning (the profile)
    nc1_after: float | None  # NC1 of the head's input after tuning
    wall_seconds: float


@dataclass
class SweepResult:
    """The sweep table, the profile's rule picks and how good each pick was.

    Attributes:
        points: one :class:`SweepPoint` per (block, mode) run.
        picks: selection rule → the block it picks from the profile.
        profile: the pretrained backbone's per-block collapse profile, as dicts.
        backbone: the backbone spec.
        dataset: the data source.
        seconds: wall time of the whole sweep.
        metric: the score reported for every run: ``'test_accuracy'``, or
            ``'val_accuracy'`` when there is no test split.
        regret: rule → mode → the pick's gap to the best block (:meth:`best`, chosen on
            validation) in :attr:`metric` points; negative where the rule's pick scored higher.
    """

    points: list[SweepPoint]
    picks: dict[str, str]  # rule → block
    profile: list[dict[str, Any]]
    backbone: str
    dataset: str
    seconds: float
    metric: str = "test_accuracy"
    regret: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def chosen_on(self) -> str:
        """The score :meth:`best` chooses by: ``'val_accuracy'`` when the runs have one (a
        test score must not choose what it then reports), else :attr:`metric`."""
        if any(p.val_accuracy is not None for p in self.points):
            return "val_accuracy"
        return self.metric

    def best(self, mode: str) -> SweepPoint | None:
        """The run of ``mode`` chosen on validation: the highest :attr:`chosen_on` score.

        Its :attr:`metric` (test accuracy) is what the sweep reports for it; choosing on the
        test split instead would report an optimistically biased, selected-on-test number.

        Args:
            mode: ``'layer'`` or ``'scl'``.

        Returns:
            The chosen :class:`SweepPoint` (ties: the shallower, cheaper block), or None
            when no run of ``mode`` has a score (no validation or test split).
        """
        key = self.chosen_on
        pts = [p for p in self.points if p.mode == mode and getattr(p, key) is not None]
        return max(pts, key=lambda p: (getattr(p, key), -p.index)) if pts else None

    def _score(self, p: SweepPoint) -> float | None:
        return getattr(p, self.metric)

    def regrets(self, modes: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
        """Each rule's regret per mode: ``100 · (metric of best(mode) − metric of the pick)``.

        Returns:
            rule → mode → accuracy points (negative where the pick scored higher than the
            block chosen on validation), None when the pick was not swept in that mode or
            either has no score.
        """
        out: dict[str, dict[str, float | None]] = {}
        tops = {mode: self.best(mode) for mode in modes}  # the same for every rule
        for rule, block in self.picks.items():
            out[rule] = {}
            for mode in modes:
                top = tops[mode]
                want = None if top is None else self._score(top)
                got = next(
                    (self._score(p) for p in self.points if p.mode == mode and p.block == block),
                    None,
                )
                out[rule][mode] = None if got is None or want is None else 100.0 * (want - got)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The sweep as a JSON-ready dict (the sweep's result file).

        Returns:
            The fields, plus ``best``: mode → the block chosen on validation (None when no
            run of that mode has a score), ``chosen_on``: the score it was chosen by,
            ``best_score``: mode → that block's :attr:`metric` (its test accuracy);
            ``points`` as dicts.
        """
        modes = sorted({p.mode for p in self.points})
        best = {m: self.best(m) for m in modes}
        return {
            "backbone": self.backbone,
            "dataset": self.dataset,
            "metric": self.metric,
            "seconds": self.seconds,
            "picks": self.picks,
            "regret": self.regret,
            "best": {m: getattr(p, "block", None) for m, p in best.items()},
            "chosen_on": self.chosen_on,
            "best_score": {m: None if p is None else self._score(p) for m, p in best.items()},
            "points": [asdict(p) for p in self.points],
            "profile": self.profile,
        }


def layer_sweep(
    recipe: Recipe,
    *,
    blocks: list[str] | None = None,
    modes: tuple[str, ...] = ("layer", "scl"),
    rules: list[str] | None = None,
    progress: Callable[..., None] | None = None,
) -> SweepResult:
    """Fine-tune each block in turn (Layer-FT and/or SCL-FT) and score the selection rules.

    Every run uses the recipe's data, seed, epochs and learning rate unchanged, so the runs
    differ only in the tuned block. Under ``torchrun`` the profile is measured on shards
    and summed; the runs are dealt out round-robin to the ranks, each training its runs
    alone on the whole data, and every rank returns the whole table. The rules see one collapse profile of the pretrained
    backbone, measured once before the sweep.

    Args:
        recipe: the base recipe (its ``strategy`` section is replaced per run).
        blocks: module paths or globs to sweep (default: every block).
        modes: ``"layer"`` (block + head) and/or ``"scl"`` (block + skip head).
        rules: selection rules to score (default: every registered rule).
        progress: ``progress(phase, done, total)`` callback.

    Returns:
        The table of runs, each rule's pick, and each pick's regret per mode:
        ``100 · (score of the best block − score of the picked block)`` in accuracy points
        (scores on :attr:`SweepResult.metric`, the best block chosen on validation), None when
        the pick was not swept in that mode or has no score. Rules that cannot pick
        (e.g. ``max_ncc`` without a validation split) are left out.

    Raises:
        ConfigError: an unknown mode, or an invalid recipe for a run.
        BackboneError: a ``blocks`` entry matches no module, or the backbone cannot be
            loaded.
        DataError: the recipe's data cannot be loaded.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"--modes: unknown mode {bad[0]!r} (choose from {', '.join(MODES)})")
    start = time.perf_counter()
    rank, world = dist.rank(), dist.world_size()
    backbone, splits, plain, device = prepare(recipe)
    names = backbone.resolve_layers(blocks, field="--blocks")
    profile = _profile(backbone, plain, recipe, device, progress, "profile")
    picks = {}
    for rule in rules or list_rules():
        try:
            name, params = recipe.strategy.selection_rule(rule)
            picks[rule] = select_layers(profile, name, **params).layers[0]
        except ConfigError:  # e.g. max_ncc without a validation split
            continue
    by_name = {layer.name: layer for layer in profile.layers}
    # Under torchrun the runs are dealt out to the ranks; each fine-tunes its own blocks
    # alone on the whole data (local(): no collectives inside) and rank 0 gathers the table.
    jobs = [(i, block, mode) for i, block in enumerate(names) for mode in modes]
    points: list[SweepPoint] = []
    with local():
        if progress:
            progress("sweep", 0, len(jobs[rank::world]))
        for i, block, mode in jobs[rank::world]:
            run_recipe = recipe.model_copy(deep=True)
            run_recipe.strategy.name = MODES[mode]
            run_recipe.strategy.layers = [block]
            run_recipe.train.profile_after = False
            r = finetune(run_recipe)
            points.append(
                SweepPoint(
                    block=block,
                    index=i,
                    mode=mode,
                    test_accuracy=r.test_accuracy,
                    val_accuracy=r.val_accuracy,
                    trainable_params=r.trainable_params,
                    total_params=r.total_params,
                    nc1_before=by_name[block].nc1 if block in by_name else None,
                    nc1_after=r.nc1_after,
                    wall_seconds=r.wall_seconds,
                )
            )
            if progress:  # this rank's runs: a line per finished run, with its score
                score = r.test_accuracy if r.test_accuracy is not None else r.val_accuracy
                shown = "–" if score is None else f"{100 * score:.1f}%"
                progress(
                    "sweep", len(points), len(jobs[rank::world]), info=f"{mode} {block}: {shown}"
                )
    order = {(i, mode): n for n, (i, _, mode) in enumerate(jobs)}
    points = sorted(
        (p for part in all_gather(points) for p in part), key=lambda p: order[p.index, p.mode]
    )
    metric = "test_accuracy" if points and points[0].test_accuracy is not None else "val_accuracy"
    result = SweepResult(
        points,
        picks,
        [layer.to_dict() for layer in profile.layers],
        backbone.spec,
        splits.source,
        0.0,
        metric,
    )
    result.regret = result.regrets(modes)
    result.seconds = time.perf_counter() - start
    return result
