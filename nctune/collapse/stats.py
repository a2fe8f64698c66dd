"""Streaming neural-collapse statistics: :class:`CollapseStats` (its result type,
:class:`~nctune.collapse.metrics.CollapseMetrics`, and its input checks live next to it)."""

from __future__ import annotations

import math
import operator
import warnings
from typing import Literal

import torch

from nctune.collapse.checks import as_tensor, check_batch
from nctune.collapse.functional import (
    PINV_RTOL,
    _batch_sums,
    _cdnv,
    _geometry,
    _nc1_directions,
    _reshift,
    _Sums,
    _trace_ratio,
    accumulation_device,
    nc2_from_means,
    resolution,
    same_feature_rtol,
)
from nctune.collapse.metrics import CollapseMetrics
from nctune.errors import CollapseError

Mode = Literal["auto", "full", "two_pass"]

#: Default width above which ``mode="auto"`` switches to the bounded-memory two-pass mode.
#: At D = 4096 the full mode keeps a 128 MiB float64 second-moment matrix per layer.
DEFAULT_MAX_FULL_DIM = 4096


def _integer(name: str, value: object) -> int:
    """``value`` as an int (numpy integers too); a bool, float or text names ``name``."""
    if isinstance(value, bool):  # True is an int to Python, not a class count
        raise CollapseError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise CollapseError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        ) from None


class CollapseWarning(UserWarning):
    """Emitted when declared classes have no samples and are left out of the metrics."""


class CollapseStats:
    """Streaming neural-collapse statistics for one layer's features.

    Accumulates, in float64 on the features' device, the additive sums

        n_k,  s_k = Σ_{y=k} (h − c),  S = Σ (h − c)(h − c)ᵀ,  q_k = Σ_{y=k} ‖h − c‖²

    around a shift ``c`` (the first batch's mean) that prevents cancellation when
    features share a large offset. :meth:`compute` then forms, for the K classes present,

        Σ_W = (S − Σ_k n_k m_k m_kᵀ) / N,   m_k = s_k / n_k
        Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ
        NC1 = (1/K) tr(Σ_W Σ_B⁺) = Σ_j (u_jᵀ Σ_W u_j) / σ_j²

    where Mᶜ = [μ_k − μ_G] = U diag(σ) Vᵀ is a thin SVD and directions with
    σ_j² ≤ 1e-10 σ_max² are dropped (the pseudo-inverse cut-off). Memory is
    O(D² + KD) per layer, whatever the number of samples.

    **Two-pass mode** (``mode="two_pass"``, or ``"auto"`` with ``D > max_full_dim``) keeps
    O(KD) memory: pass 1 gathers n_k, s_k, q_k; after :meth:`next_pass` the same data is
    fed again and only the K-dimensional projections u_jᵀ(h − μ_y) are accumulated.
    Both modes give the same numbers (to float64 rounding; trace ratio and CDNV use the
    shifted one-pass variance in both). Pass 2 must see exactly the samples of pass 1 —
    only the class counts are checked — so feed it without random augmentation.

    Defined behaviour:
        * declared classes with no samples are left out of every metric (K counts the
          classes present) and a :class:`CollapseWarning` names them;
        * class means that coincide (tr Σ_B ≤ 1e-10 · tr Σ_W + ρ · mean_k ‖μ_k‖², e.g. a
          layer that maps every image alike): NC1, trace ratio and CDNV are ``inf`` (no
          class separation at all), or ``NaN`` when every feature is also the same
          (tr Σ_W ≤ ρ · mean_k ‖μ_k‖²), with a :class:`CollapseWarning`. ρ is the rounding
          noise of the features' dtype (:func:`~nctune.collapse.functional.same_feature_rtol`:
          1e-10 for float32, ≈ 3.5e-28 for float64; the coarsest dtype fed decides), so
          float32 noise between identical images coincides while float64 features with
          a common offset 1e5× (or 1e9×) their spread keep their exact metrics;
        * numpy arrays and other array-likes are converted with ``torch.as_tensor``;
        * fewer than two classes present, NaN/Inf features, labels outside ``[0, K)``,
          a width ``D`` different from the first batch's: :class:`~nctune.errors.CollapseError`,
          and the state is left exactly as before the offending batch.

    States are sums, so :meth:`merge` (and :func:`~nctune.collapse.all_reduce_stats`
    across processes) is exact: results do not depend on batch size, order or sharding.

    Example:
        >>> stats = CollapseStats(num_classes=10)
        >>> for x, y in loader:
        ...     stats.update(model(x), y)
        >>> stats.compute().nc1

    Args:
        num_classes: K, the number of declared classes; labels lie in ``[0, K)``.
        mode: ``"auto"``, ``"full"`` or ``"two_pass"``.
        max_full_dim: in ``"auto"`` mode, widths above this use two passes.

    Attributes:
        num_classes: K declared.
        requested_mode: ``mode`` as given.
        max_full_dim: as given.
        dim: D, set by the first batch (``None`` before).
        shift: ``(D,)`` float64 shift c (``None`` before the first batch).
        pass_index: 1, or 2 after :meth:`next_pass`.

    Raises:
        CollapseError: ``num_classes`` not an integer ≥ 2, an unknown ``mode``, or
            ``max_full_dim`` not an integer ≥ 1 (one line naming the argument).
    """

    def __init__(
        self, num_classes: int, mode: Mode = "auto", max_full_dim: int = DEFAULT_MAX_FULL_DIM
    ) -> None:
        num_classes = _integer("num_classes", num_classes)
        if num_classes < 2:
            raise CollapseError(f"num_classes must be at least 2, got {num_classes}")
        if mode not in ("auto", "full", "two_pass"):
            raise CollapseError(f"mode must be 'auto', 'full' or 'two_pass', got {mode!r}")
        max_full_dim = _integer("max_full_dim", max_full_dim)
        if max_full_dim < 1:
            raise CollapseError(f"max_full_dim must be at least 1, got {max_full_dim}")
        self.num_classes = num_classes
        self.requested_mode: Mode = mode
        self.max_full_dim = max_full_dim
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all data (configuration is kept)."""
        self.dim: int | None = None
        self.shift: torch.Tensor | None = None
        self._sums: _Sums | None = None
        self._batches = 0
        self._eps = 0.0  # the coarsest feature dtype's epsilon (see same_feature_rtol)
        # Two-pass state: frozen after next_pass().
        self.pass_index = 1
        self._frozen_means: torch.Tensor | None = None  # (K, D) shifted means, all classes
        self._directions: torch.Tensor | None = None  # U (D, r)
        self._proj_sq: torch.Tensor | None = None  # (r,) Σ_i (u_jᵀ(h_i − μ_{y_i}))²
        self._pass2_counts: torch.Tensor | None = None

    @property
    def mode(self) -> str:
        """Resolved mode, ``"full"`` or ``"two_pass"`` (``"auto"`` until the first batch)."""
        return "auto" if self.dim is None else self._mode_at(self.dim)

    def _mode_at(self, dim: int) -> str:
        if self.requested_mode != "auto":
            return self.requested_mode
        return "two_pass" if dim > self.max_full_dim else "full"

    @property
    def num_samples(self) -> int:
        """Samples accumulated in the first pass."""
        return 0 if self._sums is None else int(self._sums.counts.sum().item())

    @property
    def device(self) -> torch.device | None:
        """Device holding the sums (``None`` before the first batch)."""
        return None if self.shift is None else self.shift.device

    @property
    def needs_another_pass(self) -> bool:
        """True when :meth:`compute` needs the data fed once more (two-pass mode, pass 1)."""
        return self.mode == "two_pass" and self.pass_index == 1

    # ----------------------------------------------------------------- update
    @torch.inference_mode(False)  # state tensors stay normal: updatable in and out of it
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> CollapseStats:
        """Add a batch to the sums (or, in pass 2, to the projected residuals).

        An empty batch is ignored.

        Args:
            features: ``(B, D)`` features of any float dtype/device.
            labels: ``(B,)`` integer labels in ``[0, K)``.

        Returns:
            ``self``, so calls can be chained.

        Raises:
            CollapseError: on invalid input (shapes, label dtype or range, a width other
                than the first batch's, NaN/Inf); the state is left untouched.
        """
        features = as_tensor(features, "features").detach()
        labels = as_tensor(labels, "labels").detach()
        if features.shape[0] == 0:
            return self
        check_batch(features, labels, self.num_classes, self.dim, f"batch {self._batches}")
        dev = self.device or accumulation_device(features.device)
        x = features.to(device=dev, dtype=torch.float64)
        y = labels.to(device=dev, dtype=torch.long)
        if self.pass_index == 2:
            self._update_second_pass(x, y)
        else:
            if self.shift is None:
                self.dim = int(x.shape[1])
                self.shift = x.mean(dim=0)
            full = self.mode == "full"
            self._sums = _batch_sums(x - self.shift, y, self.num_classes, full, into=self._sums)
        self._batches += 1
        self._eps = max(self._eps, resolution(features.dtype))
        return self

    def _add(self, batch: _Sums) -> None:
        if self._sums is None:
            self._sums = batch
            return
        s = self._sums
        s.counts += batch.counts
        s.sums += batch.sums
        s.sq_norms += batch.sq_norms
        if s.second_moment is not None and batch.second_moment is not None:
            s.second_moment += batch.second_moment

    def _update_second_pass(self, x: torch.Tensor, y: torch.Tensor) -> None:
        assert self._frozen_means is not None and self._directions is not None
        resid = (x - self.shift) - self._frozen_means[y]
        proj = resid @ self._directions
        self._proj_sq += proj.square().sum(dim=0)
        self._pass2_counts += torch.bincount(y, minlength=self.num_classes).to(torch.float64)

    # ------------------------------------------------------------ two passes
    @torch.inference_mode(False)  # state tensors stay normal: updatable in and out of it
    def next_pass(self) -> None:
        """Finish pass 1 of two-pass mode: freeze the class means and the range of Σ_B.

        Feed exactly the same samples again with :meth:`update`, then :meth:`compute`.
        In a distributed run, call :func:`~nctune.collapse.all_reduce_stats` first.

        Raises:
            CollapseError: not in two-pass mode, already in pass 2, no samples, or fewer
                than two classes present.
        """
        if self.mode != "two_pass":
            raise CollapseError("next_pass() is only used in two_pass mode")
        if self.pass_index != 1:
            raise CollapseError("next_pass() was already called; call reset() to start over")
        g = self._checked_geometry()
        means = torch.zeros(self.num_classes, self.dim, dtype=torch.float64, device=self.device)
        means[g.classes] = g.means
        self._frozen_means = means
        self._directions, _ = _nc1_directions((g.means - g.global_mean).T)
        r = self._directions.shape[1]
        self._proj_sq = torch.zeros(r, dtype=torch.float64, device=self.device)
        self._pass2_counts = torch.zeros(self.num_classes, dtype=torch.float64, device=self.device)
        self.pass_index = 2

    # ------------------------------------------------------------------ merge
    @torch.inference_mode(False)  # state tensors stay normal: updatable in and out of it
    def merge(self, other: CollapseStats) -> CollapseStats:
        """Add another state's sums to this one (exact; shifts are reconciled).

        Both states must be in the same pass; second-pass states must share the frozen
        means of a merged first pass. An empty ``other`` changes nothing; into an empty
        ``self`` its state is copied.

        Args:
            other: the state to add; not modified.

        Returns:
            ``self``, so calls can be chained.

        Raises:
            CollapseError: different K, D, resolved mode or pass, or second-pass states
                with different frozen means.
        """
        if other.num_classes != self.num_classes:
            raise CollapseError(f"cannot merge K={other.num_classes} into K={self.num_classes}")
        if other._sums is None:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise CollapseError(f"cannot merge D={other.dim} into D={self.dim}")
        if other.mode != self._mode_at(other.dim):  # also for a fresh "auto" state
            raise CollapseError(
                f"cannot merge a {other.mode} state into a {self._mode_at(other.dim)} state"
            )
        if other.pass_index != self.pass_index and self._sums is not None:
            raise CollapseError("cannot merge states that are in different passes")
        if self._sums is None:
            self._copy_from(other)
            return self
        if self.pass_index == 2:
            if not torch.equal(self._frozen_means, other._frozen_means.to(self.device)):
                raise CollapseError("second-pass states must come from the same merged first pass")
            self._proj_sq += other._proj_sq.to(self.device)
            self._pass2_counts += other._pass2_counts.to(self.device)
        else:
            theirs = other._sums.map(lambda t: t.to(self.device))
            delta = other.shift.to(self.device) - self.shift
            self._add(_reshift(theirs, delta))
        self._batches += other._batches
        self._eps = max(self._eps, other._eps)
        return self

    def _copy_from(self, other: CollapseStats) -> None:
        def c(t):
            return None if t is None else t.clone()

        self.dim, self.shift, self.pass_index = other.dim, c(other.shift), other.pass_index
        self._sums = other._sums.map(torch.clone)
        self._frozen_means, self._directions = c(other._frozen_means), c(other._directions)
        self._proj_sq, self._pass2_counts = c(other._proj_sq), c(other._pass2_counts)
        self._batches, self._eps = other._batches, other._eps

    @torch.inference_mode(False)  # state tensors stay normal: updatable in and out of it
    def rebase(self, shift: torch.Tensor) -> None:
        """Re-express the first-pass sums around a new shift (used before an all-reduce).

        Exact: with δ = c − c', s'_k = s_k + n_k δ, q'_k = q_k + 2 δ·s_k + n_k ‖δ‖²,
        S' = S + (Σ_k s_k) δᵀ + δ (Σ_k s_k)ᵀ + N δ δᵀ; the metrics do not change.

        Args:
            shift: ``(D,)`` new shift c'; copied, as float64 on :attr:`device`.

        Raises:
            CollapseError: no first-pass data, or already in pass 2.
        """
        if self._sums is None or self.pass_index != 1:
            raise CollapseError("rebase() needs first-pass data")
        shift = shift.to(device=self.device, dtype=torch.float64)
        self._sums = _reshift(self._sums, self.shift - shift)
        self.shift = shift.clone()

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """The whole state as tensors and ints (for checkpoints; ``torch.save``-able).

        Returns:
            A dict of configuration, sums and two-pass state; tensors are not copied.
        """
        s = self._sums
        return {
            "num_classes": self.num_classes,
            "requested_mode": self.requested_mode,
            "max_full_dim": self.max_full_dim,
            "dim": self.dim,
            "shift": self.shift,
            "sums": None if s is None else [s.counts, s.sums, s.sq_norms, s.second_moment],
            "batches": self._batches,
            "eps": self._eps,
            "pass_index": self.pass_index,
            "frozen_means": self._frozen_means,
            "directions": self._directions,
            "proj_sq": self._proj_sq,
            "pass2_counts": self._pass2_counts,
        }

    @torch.inference_mode(False)  # state tensors stay normal: updatable in and out of it
    def load_state_dict(self, state: dict) -> None:
        """Restore a state written by :meth:`state_dict`.

        Args:
            state: a dict from :meth:`state_dict`; its tensors are used as they are.

        Raises:
            CollapseError: ``state`` was written for a different ``num_classes``.
        """
        if state["num_classes"] != self.num_classes:
            raise CollapseError(
                f"state has K={state['num_classes']}, this object K={self.num_classes}"
            )
        self.requested_mode = state["requested_mode"]
        self.max_full_dim = state["max_full_dim"]
        self.dim, self.shift = state["dim"], state["shift"]
        self._sums = None if state["sums"] is None else _Sums(*state["sums"])
        self._batches, self.pass_index = state["batches"], state["pass_index"]
        # a state saved before the precision was recorded came from float32 features
        self._eps = float(state.get("eps", torch.finfo(torch.float32).eps))
        self._frozen_means, self._directions = state["frozen_means"], state["directions"]
        self._proj_sq, self._pass2_counts = state["proj_sq"], state["pass2_counts"]

    # ---------------------------------------------------------------- compute
    def _checked_geometry(self):
        if self._sums is None:
            raise CollapseError("no samples were given: call update() before compute()")
        missing = (self._sums.counts == 0).nonzero().flatten().tolist()
        present = self.num_classes - len(missing)
        if present < 2:
            raise CollapseError(
                f"neural collapse needs samples of at least two classes, got {present}"
            )
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
            warnings.warn(
                f"{len(missing)} of {self.num_classes} classes have no samples and are left "
                f"out of the metrics: {shown}",
                CollapseWarning,
                stacklevel=3,
            )
        return _geometry(self._sums)

    def compute(self) -> CollapseMetrics:
        """Metrics of everything accumulated so far (see the class docstring for the maths).

        Classes without samples are left out, with a :class:`CollapseWarning`.

        Returns:
            The :class:`CollapseMetrics` of the classes present.

        Raises:
            CollapseError: no samples, fewer than two classes present, or in two-pass mode
                when :meth:`next_pass` and the second pass are missing or the second pass
                saw different class counts.
        """
        if self.needs_another_pass:
            raise CollapseError(
                "two_pass mode: call next_pass() and feed the same data again before compute()"
            )
        g = self._checked_geometry()
        centred = (g.means - g.global_mean).T  # Mᶜ, D × K
        n = g.num_samples
        if self.mode == "two_pass":
            if not torch.equal(self._pass2_counts, self._sums.counts):
                raise CollapseError(
                    "two_pass mode: the second pass saw different samples than the first"
                )
            sigma2 = _nc1_directions(centred)[1]
            within_proj = self._proj_sq / n
        else:
            u, sigma2 = _nc1_directions(centred)
            # u_jᵀ Σ_W u_j = (u_jᵀ S u_j − Σ_k n_k (u_jᵀ m_k)²) / N, no D×D Σ_W formed.
            s_u = (self._sums.second_moment @ u * u).sum(dim=0)
            between = (g.counts[:, None] * (g.means @ u).square()).sum(dim=0)
            within_proj = (s_u - between) / n
        nc1 = float((within_proj.clamp_min(0.0) / sigma2).sum())
        tr_w, tr_b = _trace_ratio(g)
        ratio, cdnv = (tr_w / tr_b if tr_b > 0 else math.nan), _cdnv(g)
        # Class means that coincide (a layer mapping every image alike, e.g. an all-black
        # image folder) leave Σ_B = 0: NC1 would read 0, "perfectly collapsed". The spreads
        # are centred (around c), so only the rounding noise of the features' own dtype,
        # relative to their magnitude, counts as zero: float32 noise between identical
        # images does, a float64 spread 1e-6 of a common offset does not.
        magnitude = float((g.means + self.shift).square().sum(dim=1).mean())
        noise = same_feature_rtol(self._eps) * magnitude
        if tr_b <= PINV_RTOL * tr_w + noise:
            spread = tr_w > PINV_RTOL * tr_w + noise
            nc1 = ratio = cdnv = math.inf if spread else math.nan
            warnings.warn(
                "the class means coincide (no between-class spread): NC1, trace ratio and CDNV "
                + ("are inf" if spread else "are NaN: every feature is the same"),
                CollapseWarning,
                stacklevel=2,
            )
        equinorm, equiangle = nc2_from_means(g.means, g.global_mean)
        return CollapseMetrics(
            nc1=nc1,
            trace_ratio=ratio,
            cdnv=cdnv,
            nc2_equinorm=equinorm,
            nc2_equiangle=equiangle,
            num_samples=n,
            num_classes=int(g.classes.numel()),
            dim=int(self.dim),
            within_trace=tr_w,
            between_trace=tr_b,
            classes=g.classes,
            class_counts=g.counts.to(torch.long),
            class_means=g.means + self.shift,
            global_mean=g.global_mean + self.shift,
            mode=self.mode,
        )

    def __repr__(self) -> str:
        return (
            f"CollapseStats(num_classes={self.num_classes}, dim={self.dim}, mode={self.mode!r}, "
            f"num_samples={self.num_samples}, pass={self.pass_index})"
        )
