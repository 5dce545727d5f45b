"""The YOLO-World localizer under concurrency: shared batches, overload, cancellation."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from crop_localizer.batcher import MicroBatcher
from crop_localizer.errors import LocalizerClosed, LocalizerOverloaded
from crop_localizer.metrics import LocalizerMetrics
from crop_localizer.yolo_world import NO_PHRASE_REASON
from tests.localizer_fixtures import make_localizer, scene

QUESTIONS = [
    "What color is the dog?",
    "Is the woman holding an umbrella?",
    "What does the sign say?",
    "How many cars and buses are there?",
    "Where is the cat?",
    "Is the man wearing a hat?",
    "What is on the plate?",
    "What is the traffic light showing?",
]
IMAGES = [scene(100 + i, 240 + 40 * i, 200) for i in range(len(QUESTIONS))]


def batches(registry: CollectorRegistry) -> tuple[float, float]:
    """(forward passes run, images they held)."""
    return (
        registry.get_sample_value("crop_localizer_batch_size_count") or 0.0,
        registry.get_sample_value("crop_localizer_batch_size_sum") or 0.0,
    )


def summary(result):
    return (result.region, result.cells, result.phrases, [d.label for d in result.detections])


@pytest.fixture
async def solo_results(detector, vocabulary):
    """What each image gets when it is localized alone, one forward pass per image."""
    solo = make_localizer(detector, vocabulary, max_batch=1, max_wait_s=0.0)
    results = [(await solo.localize([im], [q]))[0] for im, q in zip(IMAGES, QUESTIONS, strict=True)]
    await solo.aclose()
    return results


async def test_concurrent_callers_are_batched_together(detector, vocabulary):
    registry = CollectorRegistry()
    localizer = make_localizer(detector, vocabulary, registry, max_batch=4, max_wait_s=0.2)
    await asyncio.gather(
        *(localizer.localize([im], [q]) for im, q in zip(IMAGES, QUESTIONS, strict=True))
    )
    passes, images = batches(registry)
    assert images == len(QUESTIONS)
    assert passes < images  # at least one forward pass held several callers' images
    await localizer.aclose()


async def test_every_concurrent_caller_gets_its_own_answer(detector, vocabulary, solo_results):
    localizer = make_localizer(detector, vocabulary, max_batch=8, max_wait_s=0.2)
    answers = await asyncio.gather(
        *(localizer.localize([im], [q]) for im, q in zip(IMAGES, QUESTIONS, strict=True))
    )
    assert [summary(a[0]) for a in answers] == [summary(s) for s in solo_results]
    assert all(s.region is not None for s in solo_results)
    await localizer.aclose()


async def test_multi_image_request_keeps_its_order(detector, vocabulary, solo_results):
    localizer = make_localizer(detector, vocabulary, max_batch=8, max_wait_s=0.0)
    results = await localizer.localize(IMAGES[::-1], QUESTIONS[::-1])
    assert [summary(r) for r in results] == [summary(s) for s in solo_results[::-1]]
    await localizer.aclose()


async def test_question_without_an_object_skips_the_detector(detector, vocabulary):
    registry = CollectorRegistry()
    localizer = make_localizer(detector, vocabulary, registry)
    [result] = await localizer.localize([IMAGES[0]], ["What time is it?"])
    assert result.region is None and result.reason == NO_PHRASE_REASON
    assert batches(registry) == (0.0, 0.0)
    await localizer.aclose()


async def test_full_queue_rejects_callers_at_once_with_a_clear_error(detector, vocabulary):
    registry = CollectorRegistry()
    localizer = make_localizer(
        detector, vocabulary, registry, max_batch=1, max_wait_s=0.0, max_queue=2
    )
    outcomes = await asyncio.gather(
        *(localizer.localize([im], [q]) for im, q in zip(IMAGES, QUESTIONS, strict=True)),
        return_exceptions=True,
    )
    rejected = [o for o in outcomes if isinstance(o, LocalizerOverloaded)]
    answered = [o for o in outcomes if isinstance(o, list)]
    assert len(rejected) + len(answered) == len(QUESTIONS)
    assert rejected and answered
    assert "queue is full" in str(rejected[0])
    assert registry.get_sample_value("crop_localizer_overloaded_total") == len(rejected)
    # The service recovers: once the queue drains, a new caller is served.
    [later] = await localizer.localize([IMAGES[0]], [QUESTIONS[0]])
    assert later.region is not None
    await localizer.aclose()


async def test_overloaded_request_queues_none_of_its_images(detector, vocabulary):
    localizer = make_localizer(detector, vocabulary, max_queue=3)
    with pytest.raises(LocalizerOverloaded):
        await localizer.localize(IMAGES[:4], QUESTIONS[:4])
    assert localizer.batcher.queued == 0
    await localizer.aclose()


async def test_cancelled_waiting_caller_is_skipped_and_others_answered(
    detector, vocabulary, solo_results
):
    registry = CollectorRegistry()
    localizer = make_localizer(detector, vocabulary, registry, max_batch=1, max_wait_s=0.0)
    first, second, third = (
        asyncio.create_task(localizer.localize([IMAGES[i]], [QUESTIONS[i]])) for i in range(3)
    )
    async with asyncio.timeout(120):  # first is running, second and third wait
        while localizer.batcher.queued != 2:
            await asyncio.sleep(0.001)
    second.cancel()
    assert summary((await third)[0]) == summary(solo_results[2])
    assert summary((await first)[0]) == summary(solo_results[0])
    with pytest.raises(asyncio.CancelledError):
        await second
    assert batches(registry) == (2.0, 2.0)  # the cancelled image never reached the model
    await localizer.aclose()


async def test_caller_cancelled_mid_batch_does_not_break_the_batch(
    detector, vocabulary, solo_results
):
    registry = CollectorRegistry()
    localizer = make_localizer(detector, vocabulary, registry, max_batch=4, max_wait_s=0.05)
    doomed, kept = (
        asyncio.create_task(localizer.localize([IMAGES[i]], [QUESTIONS[i]])) for i in range(2)
    )
    while batches(registry)[0] == 0:  # wait until the batch holding both is running
        await asyncio.sleep(0.001)
    doomed.cancel()
    assert summary((await kept)[0]) == summary(solo_results[1])
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert batches(registry) == (1.0, 2.0)
    [after] = await localizer.localize([IMAGES[2]], [QUESTIONS[2]])  # still serving
    assert summary(after) == summary(solo_results[2])
    await localizer.aclose()


async def test_region_outcomes_and_timings_are_exported_as_metrics(detector, vocabulary):
    registry = CollectorRegistry()
    localizer = make_localizer(detector, vocabulary, registry)
    await localizer.localize([*IMAGES[:2], IMAGES[0]], [*QUESTIONS[:2], "What time is it?"])
    value = registry.get_sample_value
    assert value("crop_localizer_regions_total", {"outcome": "found"}) == 2.0
    assert value("crop_localizer_regions_total", {"outcome": "not_found"}) == 1.0
    assert value("crop_localizer_queue_wait_seconds_count") == 2.0
    assert value("crop_localizer_inference_seconds_count") == batches(registry)[0] >= 1.0
    assert value("crop_localizer_inference_seconds_sum") > 0.0
    await localizer.aclose()


async def test_closed_localizer_refuses_new_requests(detector, vocabulary):
    localizer = make_localizer(detector, vocabulary)
    await localizer.aclose()
    with pytest.raises(LocalizerClosed):
        await localizer.localize([IMAGES[0]], [QUESTIONS[0]])


async def test_failing_batch_reports_the_error_to_each_caller_and_keeps_running():
    def halve(items: list[int]) -> list[float]:
        if 0 in items:
            raise ZeroDivisionError("a zero in the batch")
        return [1 / item for item in items]

    batcher = MicroBatcher(
        halve,
        max_batch=4,
        max_wait_s=0.05,
        max_queue=8,
        metrics=LocalizerMetrics(CollectorRegistry()),
    )
    outcomes = await asyncio.gather(batcher.run([0]), batcher.run([2]), return_exceptions=True)
    assert all(isinstance(o, ZeroDivisionError) for o in outcomes)
    assert await batcher.run([4, 5]) == [0.25, 0.2]
    await batcher.aclose()
