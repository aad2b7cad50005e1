"""``run``/``generate``'s per-step callback (``on_step``), diffusers' ``callback_on_step_end`` as far as it fits:
progress after every UNet call, and a clean end with ``Cancelled`` when it returns ``STOP`` or raises."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from audioldm_trt.engine import STOP, Cancelled

from conftest import ModelUnderTest

ARGUMENTS: dict[str, Any] = {"prompt": "a dog barking", "audio_length_in_s": 0.9, "num_inference_steps": 4, "seed": 0}


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "HeunDiscreteScheduler"])
def test_on_step_sees_every_unet_call_and_leaves_the_audio_alone(tiny: ModelUnderTest, scheduler: str) -> None:
    """Heun makes two UNet calls per step: the count is of calls, as ``Generation.unet_calls``."""
    engine = tiny.engine
    seen: list[tuple[int, int]] = []
    request = engine.request(**ARGUMENTS, scheduler=scheduler)
    generation = engine.complete(request, on_step=lambda step, steps: seen.append((step, steps)))
    calls = generation.unet_calls
    assert seen == [(step, calls) for step in range(calls)]
    assert calls == (4 if scheduler == "DDIMScheduler" else 7)
    np.testing.assert_array_equal(generation.audio, engine.complete(request).audio)


def test_generate_takes_on_step(tiny: ModelUnderTest) -> None:
    seen: list[int] = []
    audio = tiny.engine.generate(**ARGUMENTS, on_step=lambda step, steps: seen.append(step))
    assert seen == [0, 1, 2, 3]
    np.testing.assert_array_equal(audio, tiny.engine.generate(**ARGUMENTS))


def test_returning_stop_cancels_after_that_call(tiny: ModelUnderTest) -> None:
    seen: list[int] = []

    def stop_at_second(step: int, steps: int) -> object:
        seen.append(step)
        return STOP if step == 1 else None

    with pytest.raises(Cancelled, match=r"^stopped by the step callback after UNet call 2 of 4$"):
        tiny.engine.run(**ARGUMENTS, on_step=stop_at_second)
    assert seen == [0, 1]
    assert tiny.engine.generate(**ARGUMENTS).shape[0] == 1  # the engine goes on


def test_an_exception_in_on_step_cancels_with_it_chained(tiny: ModelUnderTest) -> None:
    def broken(step: int, steps: int) -> object:
        return 1 / 0

    with pytest.raises(Cancelled) as cancelled:
        tiny.engine.generate(**ARGUMENTS, on_step=broken)
    assert str(cancelled.value) == "the step callback raised ZeroDivisionError after UNet call 1 of 4"
    assert isinstance(cancelled.value.__cause__, ZeroDivisionError)


def test_cancelled_raised_by_on_step_passes_as_it_is(tiny: ModelUnderTest) -> None:
    def refuse(step: int, steps: int) -> object:
        raise Cancelled("the user pressed stop")

    with pytest.raises(Cancelled, match=r"^the user pressed stop$"):
        tiny.engine.generate(**ARGUMENTS, on_step=refuse)


def test_an_on_step_that_cannot_be_called_is_a_bad_argument(tiny: ModelUnderTest) -> None:
    with pytest.raises(ValueError, match=r"^on_step must be callable, got int$"):
        tiny.engine.generate(**ARGUMENTS, on_step=5)  # type: ignore[arg-type]


def test_stream_takes_on_step_before_its_first_chunk(tiny: ModelUnderTest) -> None:
    """A host that streams shows the same progress, and can stop before any audio is made."""
    engine = tiny.engine
    request = engine.request(**ARGUMENTS)
    seen: list[int] = []
    chunks = list(engine.stream(request, 0.3, on_step=lambda step, steps: seen.append(step)))
    assert seen == [0, 1, 2, 3]
    np.testing.assert_array_equal(
        np.concatenate([chunk.audio for chunk in chunks], axis=-1), engine.complete(request).audio
    )
    with pytest.raises(Cancelled):
        next(engine.stream(request, 0.3, on_step=lambda step, steps: STOP))
