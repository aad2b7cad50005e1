"""The scheduling policies' decisions: pure logic, no engine and no Ray."""

from __future__ import annotations

import pytest

from audioldm_trt.serve.policy import (
    Candidate,
    Deadline,
    Fifo,
    Fill,
    Policy,
    ServiceTimes,
    default_policy,
    make_policy,
)


def candidate(
    id: int,
    height: int = 64,
    rows: int = 2,
    stage: str = "unet",
    admitted: float = 0.0,
    service: float = 10.0,
    remaining: float | None = None,
) -> Candidate:
    return Candidate(id, (stage, height), rows, admitted, service, service if remaining is None else remaining)


def ids(chosen: list[Candidate]) -> list[int]:
    return [c.id for c in chosen]


def drain(policy: Policy, requests: list[Candidate], call_seconds: float = 1.0, now: float = 0.0) -> list[int]:
    """Run the policy to the end as the loop would from ``now``, each call taking ``call_seconds`` off each
    chosen request; the order in which requests finish."""
    remaining = {c.id: c for c in requests}
    finished = []
    while remaining:
        for c in policy.choose(list(remaining.values()), now):
            left = c.remaining_seconds - call_seconds
            if left <= 0:
                del remaining[c.id]
                finished.append(c.id)
            else:
                remaining[c.id] = Candidate(c.id, c.key, c.rows, c.admitted, c.service_seconds, left)
        now += call_seconds
    return finished


def test_deadline_takes_the_earliest_deadline_alone() -> None:
    """A deadline is admission plus twice the request's time alone: a short request that arrives while a long
    one is under way goes first at the next call, whatever stage either is in."""
    policy = Deadline()
    long_one = candidate(0, height=256, admitted=0.0, service=60.0, remaining=50.0)
    short_one = candidate(1, height=64, admitted=10.0, service=8.0)
    assert ids(policy.choose([long_one, short_one], now=10.0)) == [1]
    decoding = candidate(0, height=256, stage="vocoder", admitted=0.0, service=60.0, remaining=5.0)
    assert ids(policy.choose([decoding, short_one], now=10.0)) == [1]
    # Ties go by arrival.
    assert ids(policy.choose([candidate(5), candidate(3), candidate(4)], now=0.0)) == [3]


def test_deadline_puts_a_request_that_can_still_make_it_before_a_late_one() -> None:
    """A long request already past its deadline does not make the short ones late too; it goes when no
    punctual request waits, before later late ones."""
    policy = Deadline()
    late = candidate(0, height=256, admitted=0.0, service=30.0, remaining=20.0)  # deadline 60, done at 90 at best
    short = candidate(1, admitted=70.0, service=8.0)  # deadline 86
    assert ids(policy.choose([late, short], now=70.0)) == [1]
    later_late = candidate(2, height=256, admitted=5.0, service=30.0, remaining=20.0)
    assert ids(policy.choose([later_late, late], now=70.0)) == [0]
    # Without the short one waiting, the late ones run: none starves.
    assert drain(policy, [late, later_late, short], now=70.0) == [1, 0, 2]


def test_deadline_slack_is_checked() -> None:
    with pytest.raises(ValueError, match="slack"):
        Deadline(slack=0.5)


def test_fill_batches_every_request_of_one_key_within_the_limits() -> None:
    requests = [candidate(i, height=64, rows=2) for i in range(5)] + [candidate(9, height=128)]
    assert ids(Fill(max_requests=8).choose(requests, 0.0)) == [0, 1, 2, 3, 4]
    assert ids(Fill(max_requests=3).choose(requests, 0.0)) == [0, 1, 2]
    assert ids(Fill(max_requests=8, max_rows={"unet": 6}).choose(requests, 0.0)) == [0, 1, 2]
    # A request that does not fit the rows left is skipped for a later one that does.
    mixed = [candidate(0, rows=2), candidate(1, rows=4), candidate(2, rows=1)]
    assert ids(Fill(max_requests=8, max_rows={"unet": 3}).choose(mixed, 0.0)) == [0, 2]
    # Each stage has its limit; one call is one stage and one input length.
    decoding = [candidate(0, stage="vae_decoder", rows=1), candidate(1, stage="vae_decoder", rows=1)]
    assert ids(Fill(max_requests=8, max_rows={"vae_decoder": 1}).choose(decoding, 0.0)) == [0]
    stages = [candidate(0, stage="vocoder"), candidate(1, stage="unet"), candidate(2, stage="vocoder")]
    assert ids(Fill(max_requests=8).choose(stages, 0.0)) == [0, 2]


def test_fill_takes_the_key_with_most_rows_waiting_and_passes_no_request_over_for_long() -> None:
    """Mixed durations fill calls instead of taking turns one height a call; a request passed over four calls
    running goes next (the oldest such first), so no height starves."""
    policy = Fill(max_requests=8, patience=4)
    requests = [candidate(0, height=64), candidate(1, height=128), candidate(2, height=64), candidate(3, height=32)]
    requests.append(candidate(4, height=64))
    heights = [policy.choose(requests, 0.0)[0].key[1] for _ in range(8)]
    assert heights == [64, 64, 64, 64, 128, 32, 64, 64]
    assert ids(Fill(max_requests=8).choose(requests, 0.0)) == [0, 2, 4]
    # Rows, not requests, decide: one request of 6 rows outweighs two of 2.
    heavy = [candidate(0, rows=2), candidate(1, rows=2), candidate(2, height=32, rows=6)]
    assert ids(Fill(max_requests=8).choose(heavy, 0.0)) == [2]


def test_fill_finishes_requests_of_every_height() -> None:
    requests = [candidate(0, height=64, remaining=2), candidate(1, height=128, remaining=1), candidate(2, remaining=3)]
    assert drain(Fill(max_requests=8), requests) == [0, 1, 2]


def test_fifo_runs_one_request_at_a_time_to_its_end() -> None:
    requests = [candidate(2, remaining=3), candidate(1, remaining=9), candidate(3, remaining=1)]
    assert drain(Fifo(), requests) == [1, 2, 3]


def test_policies_choose_nothing_from_nothing() -> None:
    for policy in (Deadline(), Fill(4), Fifo()):
        assert policy.choose([], 0.0) == []


def test_policy_names_and_defaults() -> None:
    assert default_policy(on_gpu=True) == "fill" and default_policy(on_gpu=False) == "deadline"
    assert isinstance(make_policy("fill", 4), Fill) and make_policy("fill", 4).max_requests == 4
    assert make_policy("deadline", 4).max_requests == 1 and make_policy("fifo", 4).max_requests == 1
    with pytest.raises(ValueError, match="unknown policy 'lifo'"):
        make_policy("lifo", 4)
    with pytest.raises(ValueError, match="at least one request"):
        Fill(max_requests=0)


def test_service_times_follow_the_calls_measured() -> None:
    times = ServiceTimes({"unet": 0.01, "vae_decoder": 0.02, "vocoder": 0.001})
    assert times.seconds("unet", 2 * 64) == pytest.approx(1.28)
    for _ in range(40):  # the engine turned out twice as fast
        times.observe("unet", 100, 0.5)
    assert times.seconds("unet", 100) == pytest.approx(0.5, rel=1e-3)
    assert times.seconds("vocoder", 1000) == pytest.approx(1.0)
