"""The scheduling policies' decisions: pure logic, no engine and no Ray."""

from __future__ import annotations

import pytest

from audioldm_trt.serve.policy import Candidate, Fifo, Fill, LeastWork, default_policy, make_policy


def candidate(id: int, height: int = 64, rows: int = 2, remaining: int = 10, total: int | None = None) -> Candidate:
    return Candidate(id, height, rows, remaining, remaining if total is None else total)


def ids(chosen: list[Candidate]) -> list[int]:
    return [c.id for c in chosen]


def drain(policy: LeastWork | Fill | Fifo, requests: list[Candidate]) -> list[int]:
    """Run the policy to the end as the loop would (each chosen request loses one call); the order in which
    requests finish."""
    remaining = {c.id: c for c in requests}
    finished = []
    while remaining:
        for c in policy.choose(list(remaining.values())):
            left = c.remaining_calls - 1
            if left == 0:
                del remaining[c.id]
                finished.append(c.id)
            else:
                remaining[c.id] = Candidate(c.id, c.latent_height, c.rows, left, c.total_calls)
    return finished


def test_least_work_takes_the_request_with_least_remaining_work_alone() -> None:
    policy = LeastWork()
    long_one = candidate(0, height=256, remaining=25)
    short_one = candidate(1, height=64, remaining=10)
    assert ids(policy.choose([long_one, short_one])) == [1]
    # Work is calls x rows x height: fewer calls of a taller latent can be more work.
    assert ids(LeastWork().choose([candidate(0, height=256, remaining=3), candidate(1, height=64, remaining=10)])) == [
        1
    ]
    # Guidance doubles the rows and so the work.
    assert ids(LeastWork().choose([candidate(0, rows=2, remaining=6), candidate(1, rows=1, remaining=10)])) == [1]


def test_least_work_breaks_ties_by_arrival() -> None:
    assert ids(LeastWork().choose([candidate(5), candidate(3), candidate(4)])) == [3]


def test_least_work_lets_a_short_request_overtake_a_long_one_at_step_granularity() -> None:
    policy = LeastWork()
    long_one = candidate(0, height=256, remaining=25)
    for _ in range(5):  # the long request runs alone
        (chosen,) = policy.choose([long_one])
        long_one = Candidate(0, 256, 2, chosen.remaining_calls - 1, 25)
    short_one = candidate(1, height=64, remaining=10)
    order = drain(policy, [long_one, short_one])
    assert order == [1, 0]


def test_least_work_does_not_starve_a_long_request() -> None:
    """A steady stream of short requests: the long one is overdue once the loop has done `patience` times its
    own work for others, and then goes first."""
    policy = LeastWork(patience=2.0)
    long_one = candidate(0, height=256, remaining=5)
    shorts_done = 0
    next_id = 1
    short = candidate(next_id, height=64, remaining=1)
    while True:
        (chosen,) = policy.choose([long_one, short])
        if chosen.id == 0:
            break
        shorts_done += 1
        next_id += 1
        short = candidate(next_id, height=64, remaining=1)
    # Long work: 5 calls x 2 rows x 256 = 2560; each short is 128: overdue after more than 2 x 2560 of it.
    assert shorts_done == 2 * 2560 // 128 + 1
    # Once overdue it keeps going first until it is done (it only gets more overdue).
    assert drain(policy, [Candidate(0, 256, 2, 4, 5), short]) == [0, next_id]


def test_fill_batches_every_request_of_one_height_within_the_limits() -> None:
    requests = [candidate(i, height=64, rows=2) for i in range(5)] + [candidate(9, height=128)]
    assert ids(Fill(max_requests=8).choose(requests)) == [0, 1, 2, 3, 4]
    assert ids(Fill(max_requests=3).choose(requests)) == [0, 1, 2]
    assert ids(Fill(max_requests=8, max_rows=6).choose(requests)) == [0, 1, 2]
    # A request that does not fit the rows left is skipped for a later one that does.
    mixed = [candidate(0, rows=2), candidate(1, rows=4), candidate(2, rows=1)]
    assert ids(Fill(max_requests=8, max_rows=3).choose(mixed)) == [0, 2]


def test_fill_takes_the_height_with_most_rows_waiting_and_passes_no_request_over_for_long() -> None:
    """Mixed durations fill calls instead of taking turns one height a call; a request passed over four calls
    running goes next (the oldest such first), so no height starves."""
    policy = Fill(max_requests=8, patience=4)
    requests = [candidate(0, height=64), candidate(1, height=128), candidate(2, height=64), candidate(3, height=32)]
    requests.append(candidate(4, height=64))
    heights = [policy.choose(requests)[0].latent_height for _ in range(8)]
    assert heights == [64, 64, 64, 64, 128, 32, 64, 64]
    assert ids(Fill(max_requests=8).choose(requests)) == [0, 2, 4]
    # Rows, not requests, decide: one request of 6 rows outweighs two of 2.
    heavy = [candidate(0, rows=2), candidate(1, rows=2), candidate(2, height=32, rows=6)]
    assert ids(Fill(max_requests=8).choose(heavy)) == [2]


def test_fill_finishes_requests_of_every_height() -> None:
    requests = [candidate(0, height=64, remaining=2), candidate(1, height=128, remaining=1), candidate(2, remaining=3)]
    assert drain(Fill(max_requests=8), requests) == [0, 1, 2]


def test_fifo_runs_one_request_at_a_time_to_its_end() -> None:
    requests = [candidate(2, remaining=3), candidate(1, remaining=9), candidate(3, remaining=1)]
    assert drain(Fifo(), requests) == [1, 2, 3]


def test_policies_choose_nothing_from_nothing() -> None:
    for policy in (LeastWork(), Fill(4), Fifo()):
        assert policy.choose([]) == []


def test_policy_names_and_defaults() -> None:
    assert default_policy(on_gpu=True) == "fill" and default_policy(on_gpu=False) == "least-work"
    assert isinstance(make_policy("fill", 4), Fill) and make_policy("fill", 4).max_requests == 4
    assert make_policy("least-work", 4).max_requests == 1 and make_policy("fifo", 4).max_requests == 1
    with pytest.raises(ValueError, match="unknown policy 'lifo'"):
        make_policy("lifo", 4)
    with pytest.raises(ValueError, match="at least one request"):
        Fill(max_requests=0)
