"""Scheduling policies: which requests of a replica's loop go into its next engine call.

A request's work is a sequence of calls: its UNet calls, one VAE decoder call, then vocoder calls over windows
of its spectrogram (``engine/decoding.py``). Each call is scheduled like the others, so a long clip's decoding
is interleaved with other requests' denoising rather than held in one piece. A policy is pure logic over what
the loop tells it of each request in flight (a ``Candidate``) and the time: no engine, no threads. The loop
asks it once per iteration and makes one call for the requests it returns, which always share a ``key`` (the
stage and the shape of its input: one call takes one shape).

- ``deadline`` (CPU): earliest deadline first, one request per call. A request's deadline is its admission plus
  ``slack`` times its estimated time alone (every stage), which is the latency goal itself: a short request
  that arrives behind long ones has the earlier deadline and goes first at the next call. Requests that can
  still make their deadline go before those that cannot, so a request already late does not make a punctual
  one late too; late ones go by their deadlines whenever no punctual one waits, so none starves below capacity.
- ``fill`` (GPU): every request of one key, up to the call's request and row limits. On a GPU a call of many
  rows costs little more than one. The key with the most rows waiting goes next, so that mixed durations make
  full calls; a request passed over ``patience`` calls running goes first, so that no shape waits for another
  to drain.
- ``fifo``: the oldest request alone, so each runs to the end before the next starts (one at a time).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The engine calls a request makes, in order; a call takes requests of one stage.
STAGES = ("unet", "vae_decoder", "vocoder")


@dataclass(frozen=True)
class Candidate:
    """What a policy knows of one request in a replica's loop."""

    #: Unique and increasing in admission order: a smaller id arrived earlier.
    id: int
    #: The stage of the request's next call and the length of its input (latent height, or vocoder window
    #: frames): requests share a call only with the same key.
    key: tuple[str, int]
    #: Rows the request adds to its next call (guidance doubles a UNet call's).
    rows: int
    #: ``time.monotonic()`` when it was admitted.
    admitted: float
    #: Estimated seconds of the whole request alone, and of what it has left (its next call included).
    service_seconds: float
    remaining_seconds: float

    @property
    def stage(self) -> str:
        return self.key[0]


class Policy(ABC):
    """Chooses the requests of the next call; may keep state between calls (turns, waiting)."""

    name: str

    def __init__(self, max_requests: int, max_rows: Mapping[str, int | None] | None = None) -> None:
        """``max_rows``: the most rows one call of a stage may take (absent: no limit)."""
        limits = dict(max_rows or {})
        if max_requests < 1 or any(rows is not None and rows < 1 for rows in limits.values()):
            raise ValueError(f"a call needs room for at least one request, got {max_requests=} {max_rows=}")
        self.max_requests = max_requests
        self.max_rows = limits

    @abstractmethod
    def choose(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        """The requests of the next call: non-empty when ``candidates`` is, all of one key, within
        ``max_requests`` and the stage's ``max_rows``. Each candidate's rows fit alone (checked at admission)."""

    def _fill(self, first: Candidate, ordered: Sequence[Candidate], limit: int) -> list[Candidate]:
        """``first``, then the candidates of its key in ``ordered``'s order while they fit."""
        chosen, rows = [first], first.rows
        most = self.max_rows.get(first.stage)
        for candidate in ordered:
            if len(chosen) == limit:
                break
            fits = most is None or rows + candidate.rows <= most
            if candidate is not first and candidate.key == first.key and fits:
                chosen.append(candidate)
                rows += candidate.rows
        return chosen


class Deadline(Policy):
    """Earliest deadline first among requests that can still make it, then among the late; one per call."""

    name = "deadline"

    def __init__(self, max_rows: Mapping[str, int | None] | None = None, slack: float = 2.0) -> None:
        super().__init__(1, max_rows)
        if not slack >= 1:
            raise ValueError(f"slack must be at least 1, got {slack}")
        self.slack = slack

    def deadline(self, candidate: Candidate) -> float:
        return candidate.admitted + self.slack * candidate.service_seconds

    def choose(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        if not candidates:
            return []
        first = min(
            candidates,
            key=lambda c: (now + c.remaining_seconds > self.deadline(c), self.deadline(c), c.id),
        )
        return [first]


class Fill(Policy):
    """Every request of one key that fits, oldest first: the key with the most rows waiting, so that requests
    of mixed durations fill calls rather than take turns in fragments; a request passed over ``patience`` calls
    running goes first (with its key), so that no duration starves."""

    name = "fill"

    def __init__(self, max_requests: int, max_rows: Mapping[str, int | None] | None = None, patience: int = 4) -> None:
        super().__init__(max_requests, max_rows)
        self.patience = patience
        #: Calls each candidate has been passed over since it last took part in one.
        self._passed_over: dict[int, int] = {}

    def choose(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        if not candidates:
            self._passed_over.clear()
            return []
        waited = {c.id: self._passed_over.get(c.id, 0) for c in candidates}
        overdue = [c for c in candidates if waited[c.id] >= self.patience]
        if overdue:
            key = min(overdue, key=lambda c: c.id).key
        else:
            rows: dict[tuple[str, int], int] = {}
            oldest: dict[tuple[str, int], int] = {}
            for c in candidates:
                rows[c.key] = rows.get(c.key, 0) + c.rows
                oldest[c.key] = min(oldest.get(c.key, c.id), c.id)
            key = max(rows, key=lambda k: (rows[k], -oldest[k]))
        ordered = sorted((c for c in candidates if c.key == key), key=lambda c: c.id)
        chosen = self._fill(ordered[0], ordered, self.max_requests)
        taken = {c.id for c in chosen}
        self._passed_over = {i: 0 if i in taken else n + 1 for i, n in waited.items()}
        return chosen


class Fifo(Policy):
    """The oldest request alone: one request at a time, each to its end."""

    name = "fifo"

    def __init__(self, max_rows: Mapping[str, int | None] | None = None) -> None:
        super().__init__(1, max_rows)

    def choose(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        return [min(candidates, key=lambda c: c.id)] if candidates else []


POLICIES = (Deadline.name, Fill.name, Fifo.name)


def make_policy(name: str, max_batch: int, max_rows: Mapping[str, int | None] | None = None) -> Policy:
    """The policy called ``name``; ``max_batch`` requests per call where it batches (``fill``)."""
    if name == Fill.name:
        return Fill(max_batch, max_rows)
    if name == Deadline.name:
        return Deadline(max_rows)
    if name == Fifo.name:
        return Fifo(max_rows)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def default_policy(on_gpu: bool) -> str:
    """``fill`` where batching is cheap (GPUs), ``deadline`` elsewhere (CPUs: rows cost the same batched)."""
    return "fill" if on_gpu else "deadline"


class ServiceTimes:
    """Seconds per unit of work of each stage, as the loop's calls measure them (a moving average), for the
    policies' estimates. A UNet call does its rows times its latent height units, a VAE decoder call its
    waveforms times the latent height, a vocoder call its waveforms times its window's frames: each
    proportional to the call's compute."""

    #: Weight of the newest measurement in the average.
    SMOOTHING = 0.2

    def __init__(self, seconds_per_unit: Mapping[str, float]) -> None:
        self._per_unit = {stage: seconds_per_unit[stage] for stage in STAGES}

    def seconds(self, stage: str, units: float) -> float:
        return self._per_unit[stage] * units

    def observe(self, stage: str, units: float, seconds: float) -> None:
        if units > 0:
            self._per_unit[stage] += self.SMOOTHING * (seconds / units - self._per_unit[stage])
