"""A run's clock over its sessions: a run resumed after a stop continues the time its
checkpoint recorded, so ``report.json`` gives the whole run's seconds and session count."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SessionClock:
    """Wall and CPU time of a run over every session (a resumed run is one more session).

    The totals a checkpoint records are those up to its save; a session that resumes it
    adds its own time to them (time spent after the last checkpoint of a stopped session
    is lost with the work it did).

    Attributes:
        sessions: the sessions so far, this one included.
        prior_total, prior_cpu, prior_train: the earlier sessions' whole-call wall time,
            process CPU time, and training time (prefix cache and epochs).
        start, start_cpu: when this session started (``perf_counter``, ``process_time``).
        extra_train: this session's training time spent before ``fit`` (building the
            prefix cache).
        fit_start: when ``fit`` started in this session (None before).
    """

    sessions: int = 1
    prior_total: float = 0.0
    prior_cpu: float = 0.0
    prior_train: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    start_cpu: float = field(default_factory=time.process_time)
    extra_train: float = 0.0
    fit_start: float | None = None

    def resume(self, saved: Any) -> None:
        """Continue the totals a checkpoint recorded (its ``clock``; None: an older
        checkpoint without one, which then counts as one earlier session of unknown time)."""
        if saved is None:
            self.sessions = 2
            return
        self.sessions = saved.sessions + 1
        self.prior_total, self.prior_cpu = saved.total_seconds, saved.cpu_seconds
        self.prior_train = saved.train_seconds

    def total_seconds(self) -> float:
        """Wall seconds of every session up to now."""
        return self.prior_total + time.perf_counter() - self.start

    def cpu_seconds(self) -> float:
        """Process CPU seconds (all threads) of every session up to now."""
        return self.prior_cpu + time.process_time() - self.start_cpu

    def train_seconds(self) -> float:
        """Training seconds of every session up to now (this one's from ``fit_start``)."""
        running = 0.0 if self.fit_start is None else time.perf_counter() - self.fit_start
        return self.prior_train + self.extra_train + running

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``clock`` entry: the totals up to now."""
        return {
            "sessions": self.sessions,
            "total_seconds": self.total_seconds(),
            "cpu_seconds": self.cpu_seconds(),
            "train_seconds": self.train_seconds(),
        }
