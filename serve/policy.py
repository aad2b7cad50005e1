"""Scheduling policies: which requests of a replica's loop go into its next UNet call.

A policy is pure logic over what the loop tells it of each request in flight (a ``Candidate``): no engine, no
threads, no clock. The loop asks it once per iteration and makes one UNet call for the requests it returns,
which always share a latent height (one call takes one shape).

- ``least-work`` (CPU): the request with the least remaining work, alone. On CPU a row costs about the same
  at any batch size, so batching saves little and the order is what matters: short requests finish first,
  long ones continue whenever no shorter one is waiting. A request that has waited ``patience`` times its
  own work (measured in the work the loop did for others since it arrived) goes first, so that a long
  request cannot starve under a steady stream of short ones.
- ``fill`` (GPU): every request of one latent height, up to the call's request and row limits. On a GPU a
  call of many rows costs little more than one. The height with the most rows waiting goes next, so that
  mixed durations make full calls; a request passed over ``patience`` calls running goes first, so that no
  shape waits for another to drain.
- ``fifo``: the oldest request alone, so each runs to the end before the next starts (one at a time).

Work is counted in UNet row-heights: a call of ``r`` rows of latent height ``h`` does ``r * h`` units, which
is proportional to its compute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What a policy knows of one request in a replica's loop."""

    #: Unique and increasing in admission order: a smaller id arrived earlier.
    id: int
    latent_height: int
    #: Rows the request adds to a UNet call (guidance doubles its waveforms).
    rows: int
    remaining_calls: int
    total_calls: int

    @property
    def remaining_work(self) -> int:
        return self.remaining_calls * self.rows * self.latent_height

    @property
    def total_work(self) -> int:
        return self.total_calls * self.rows * self.latent_height


class Policy(ABC):
    """Chooses the requests of the next UNet call; may keep state between calls (turns, waiting)."""

    name: str

    def __init__(self, max_requests: int, max_rows: int | None = None) -> None:
        if max_requests < 1 or (max_rows is not None and max_rows < 1):
            raise ValueError(f"a call needs room for at least one request, got {max_requests=} {max_rows=}")
        self.max_requests = max_requests
        self.max_rows = max_rows

    @abstractmethod
    def choose(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The requests of the next call: non-empty when ``candidates`` is, all of one latent height, within
        ``max_requests`` and ``max_rows``. Each candidate's rows fit ``max_rows`` (checked at admission)."""

    def _fill(self, first: Candidate, ordered: Sequence[Candidate], limit: int) -> list[Candidate]:
        """``first``, then the candidates of its height in ``ordered``'s order while they fit."""
        chosen, rows = [first], first.rows
        for candidate in ordered:
            if len(chosen) == limit:
                break
            fits = self.max_rows is None or rows + candidate.rows <= self.max_rows
            if candidate is not first and candidate.latent_height == first.latent_height and fits:
                chosen.append(candidate)
                rows += candidate.rows
        return chosen


class LeastWork(Policy):
    """Least remaining work first, one request per call; a request overdue by ``patience`` goes first."""

    name = "least-work"

    def __init__(self, max_rows: int | None = None, patience: float = 4.0) -> None:
        super().__init__(1, max_rows)
        self.patience = patience
        #: Work the loop has done in all, and how much of it was done when each candidate was first seen.
        self._clock = 0
        self._seen_at: dict[int, int] = {}

    def choose(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        if not candidates:
            self._seen_at.clear()
            return []
        present = {c.id for c in candidates}
        self._seen_at = {i: t for i, t in self._seen_at.items() if i in present}
        for candidate in candidates:
            self._seen_at.setdefault(candidate.id, self._clock)
        overdue = sorted((c for c in candidates if self._overdue(c)), key=lambda c: c.id)
        ordered = overdue or sorted(candidates, key=lambda c: (c.remaining_work, c.id))
        chosen = self._fill(ordered[0], ordered, self.max_requests)
        self._clock += sum(c.rows * c.latent_height for c in chosen)
        return chosen

    def _overdue(self, candidate: Candidate) -> bool:
        waited = self._clock - self._seen_at[candidate.id] - (candidate.total_work - candidate.remaining_work)
        return waited > self.patience * candidate.total_work


class Fill(Policy):
    """Every request of one latent height that fits, oldest first: the height with the most rows waiting, so
    that requests of mixed durations fill calls rather than take turns in fragments; a request passed over
    ``patience`` calls running goes first (with its height), so that no duration starves."""

    name = "fill"

    def __init__(self, max_requests: int, max_rows: int | None = None, patience: int = 4) -> None:
        super().__init__(max_requests, max_rows)
        self.patience = patience
        #: Calls each candidate has been passed over since it last took part in one.
        self._passed_over: dict[int, int] = {}

    def choose(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        if not candidates:
            self._passed_over.clear()
            return []
        waited = {c.id: self._passed_over.get(c.id, 0) for c in candidates}
        overdue = [c for c in candidates if waited[c.id] >= self.patience]
        if overdue:
            height = min(overdue, key=lambda c: c.id).latent_height
        else:
            rows: dict[int, int] = {}
            oldest: dict[int, int] = {}
            for c in candidates:
                rows[c.latent_height] = rows.get(c.latent_height, 0) + c.rows
                oldest[c.latent_height] = min(oldest.get(c.latent_height, c.id), c.id)
            height = max(rows, key=lambda h: (rows[h], -oldest[h]))
        ordered = sorted((c for c in candidates if c.latent_height == height), key=lambda c: c.id)
        chosen = self._fill(ordered[0], ordered, self.max_requests)
        taken = {c.id for c in chosen}
        self._passed_over = {i: 0 if i in taken else n + 1 for i, n in waited.items()}
        return chosen


class Fifo(Policy):
    """The oldest request alone: one request at a time, each to its end."""

    name = "fifo"

    def __init__(self, max_rows: int | None = None) -> None:
        super().__init__(1, max_rows)

    def choose(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        return [min(candidates, key=lambda c: c.id)] if candidates else []


POLICIES = (LeastWork.name, Fill.name, Fifo.name)


def make_policy(name: str, max_batch: int, max_rows: int | None = None) -> Policy:
    """The policy called ``name``; ``max_batch`` requests per call where it batches (``fill``)."""
    if name == Fill.name:
        return Fill(max_batch, max_rows)
    if name == LeastWork.name:
        return LeastWork(max_rows)
    if name == Fifo.name:
        return Fifo(max_rows)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def default_policy(on_gpu: bool) -> str:
    """``fill`` where batching is cheap (GPUs), ``least-work`` elsewhere (CPUs: rows cost the same batched)."""
    return "fill" if on_gpu else "least-work"
