"""A round is one trace: the global's round span continues at the regional and at each silo
through the ``traceparent`` string the round announcement and the silo's task carry."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from telemetry_support import Recorder, wait_for_span

from jurisfed.auth.identity import Identity, Tier
from jurisfed.telemetry import SpanName, TraceIdsFilter, trace_context, traceparent

GLOBAL = Identity("GLOBAL", Tier.GLOBAL, "global-1")
REGIONAL = Identity("EU", Tier.REGIONAL, "eu-1")
SILO = Identity("EU", Tier.SILO, "hospital-a")

T = TypeVar("T")

W3C_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


def _in_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread of its own, as another process would: no context is shared."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


def test_the_round_span_of_the_global_is_the_root_of_the_regional_and_silo_spans(recorded: Recorder) -> None:
    global_node, global_spans = recorded(GLOBAL)
    regional_node, regional_spans = recorded(REGIONAL)
    silo_node, silo_spans = recorded(SILO)

    with global_node.tracer.start_as_current_span(SpanName.ROUND):
        announcement = traceparent()  # what the lead's RoundAnnouncement.traceparent carries
    assert W3C_TRACEPARENT.fullmatch(announcement)

    def regional_round() -> str:
        with regional_node.tracer.start_as_current_span(
            SpanName.REGIONAL_ROUND, context=trace_context(announcement)
        ):
            return traceparent()  # what each silo's task carries

    task = _in_thread(regional_round)

    def silo_training() -> None:
        with silo_node.tracer.start_as_current_span(SpanName.SILO_TRAIN, context=trace_context(task)):
            pass

    _in_thread(silo_training)

    round_span = wait_for_span(global_spans, SpanName.ROUND)
    regional_span = wait_for_span(regional_spans, SpanName.REGIONAL_ROUND)
    silo_span = wait_for_span(silo_spans, SpanName.SILO_TRAIN)
    assert round_span.parent is None
    assert regional_span.parent is not None
    assert regional_span.parent.span_id == round_span.context.span_id
    assert silo_span.parent is not None
    assert silo_span.parent.span_id == regional_span.context.span_id
    assert len({span.context.trace_id for span in (round_span, regional_span, silo_span)}) == 1


def test_an_announcement_without_a_usable_traceparent_starts_a_trace_of_its_own(recorded: Recorder) -> None:
    regional_node, regional_spans = recorded(REGIONAL)
    for value in ("", "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        regional_spans.clear()
        with regional_node.tracer.start_as_current_span(
            SpanName.REGIONAL_ROUND, context=trace_context(value)
        ):
            pass
        assert wait_for_span(regional_spans, SpanName.REGIONAL_ROUND).parent is None


def test_traceparent_is_empty_outside_any_span() -> None:
    assert traceparent() == ""


def test_log_records_written_inside_a_span_carry_its_trace_id(recorded: Recorder) -> None:
    node, _ = recorded(REGIONAL)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("jurisfed.test.telemetry")
    handler = Keep()
    handler.addFilter(TraceIdsFilter())
    logger.addHandler(handler)
    try:
        with node.tracer.start_as_current_span(SpanName.REGIONAL_ROUND) as span:
            logger.warning("inside the round")
        logger.warning("after the round")
    finally:
        logger.removeHandler(handler)

    inside, after = records
    assert inside.trace_id == f"{span.get_span_context().trace_id:032x}"  # type: ignore[attr-defined]
    assert inside.span_id == f"{span.get_span_context().span_id:016x}"  # type: ignore[attr-defined]
    assert not hasattr(after, "trace_id")
