"""The threshold state machine: hold time, hysteresis, recorded and generated sequences."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdcount.streamer.alerts import AlertEngine, AlertEvent, ThresholdRule

RULE = ThresholdRule("busy", "cam", None, above=10, below=5, for_seconds=2)


def _run(engine: AlertEngine, samples, stream: str = "cam", zone: str | None = None):
    events: list[AlertEvent] = []
    for t, v in samples:
        events += engine.update(stream, t, {zone: v})
    return events


def _reference(rule: ThresholdRule, samples) -> list[tuple[str, float]]:
    """An independent, deliberately naive reading of the rule: scan back in time."""
    out: list[tuple[str, float]] = []
    active = False
    for i, (t, v) in enumerate(samples):
        if not active:
            if v <= rule.above:
                continue
            j = i
            while j > 0 and samples[j - 1][1] > rule.above:
                j -= 1
            # (The scan stops at the clearing sample, too, which is under `below`.)
            if t - samples[j][0] >= rule.for_seconds - 1e-9:
                active = True
                out.append(("raised", t))
        elif v < rule.below:
            active = False
            out.append(("cleared", t))
    return out


def test_raises_only_after_hold_time_and_clears_below() -> None:
    engine = AlertEngine([RULE])
    seq = [(0.0, 3), (1.0, 11), (2.0, 12), (2.9, 15)]
    assert _run(engine, seq) == []  # over for 1.9 s only
    (ev,) = _run(engine, [(3.0, 11)])
    assert (ev.kind, ev.t, ev.value, ev.over_since, ev.peak) == ("raised", 3.0, 11, 1.0, 15)
    assert ev.raised_at == 3.0 and ev.reason is None
    assert engine.is_active("busy")
    assert _run(engine, [(4.0, 7), (5.0, 5), (6.0, 30), (7.0, 6)]) == []  # between: stays
    assert engine.active()[0]["peak"] == 30
    (ev,) = _run(engine, [(8.0, 4.9)])
    assert (ev.kind, ev.t, ev.value, ev.raised_at, ev.peak, ev.reason) == (
        "cleared", 8.0, 4.9, 3.0, 30, "below",
    )  # fmt: skip
    assert engine.active() == []


def test_dip_under_above_restarts_the_hold_time() -> None:
    engine = AlertEngine([RULE])
    seq = [(0.0, 11), (1.5, 11), (1.9, 10), (2.0, 11), (3.9, 11)]  # 10 is not "over 10"
    assert _run(engine, seq) == []
    (ev,) = _run(engine, [(4.0, 11)])
    assert ev.over_since == 2.0


def test_zero_hold_raises_on_first_sample_and_floating_point_hold() -> None:
    engine = AlertEngine([ThresholdRule("r", "cam", None, 1, 0, 0.0)])
    assert [e.kind for e in _run(engine, [(0.0, 2)])] == ["raised"]
    # 10 fps timestamps are not exact in binary; a 2 s hold raises on the 2 s sample.
    engine = AlertEngine([RULE])
    seq = [(k * 0.1, 20) for k in range(21)]
    events = _run(engine, seq)
    assert len(events) == 1 and events[0].t == seq[20][0]


def test_rules_are_per_stream_and_zone_and_ignore_bad_samples() -> None:
    door = ThresholdRule("door", "cam", "door", 3, 1, 0)
    other = ThresholdRule("other", "cam2", None, 3, 1, 0)
    engine = AlertEngine([door, other])
    assert engine.update("cam", 0.0, {None: 100, "hall": 100}) == []  # no door value
    assert engine.update("cam", 1.0, {None: 0, "door": math.nan}) == []
    (ev,) = engine.update("cam", 2.0, {None: 0, "door": 4})
    assert ev.rule is door and ev.zone == "door" and ev.stream == "cam"
    assert engine.update("cam", 1.5, {"door": 0}) == []  # older than the last: ignored
    assert engine.update("unknown", 3.0, {None: 100}) == []
    assert [e.rule.name for e in engine.update("cam2", 0.0, {None: 9})] == ["other"]


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="less than above"):
        ThresholdRule("r", "s", None, 5, 5)
    with pytest.raises(ValueError, match="for_seconds"):
        ThresholdRule("r", "s", None, 5, 1, -1)
    with pytest.raises(ValueError, match="duplicate"):
        AlertEngine([RULE, RULE])


def test_changed_rules_and_removed_streams_clear_active_alerts() -> None:
    engine = AlertEngine([RULE, ThresholdRule("b", "cam", None, 1, 0)])
    _run(engine, [(0.0, 20), (5.0, 20)])
    assert {a["name"] for a in engine.active()} == {"busy", "b"}
    # Re-setting an identical rule keeps its state; a changed one is cleared.
    stricter = ThresholdRule("b", "cam", None, 50, 0)
    events = engine.set_rules([RULE, stricter], t=6.0)
    assert [(e.rule.name, e.kind, e.reason, e.t) for e in events] == [
        ("b", "cleared", "rule_changed", 6.0)
    ]
    assert engine.is_active("busy")
    events = engine.forget_stream("cam", t=7.0)
    assert [(e.rule.name, e.reason, e.raised_at) for e in events] == [
        ("busy", "stream_removed", 5.0)
    ]
    assert engine.active() == []
    assert _run(engine, [(8.0, 20)]) == []  # starts from scratch: hold time again


def _noisy_waves(seed: int) -> list[tuple[float, float]]:
    """10 fps for 10 minutes: a crowd rising to ~80 and falling to ~20 every 2 minutes,
    with frame-to-frame noise of +-6 (the jitter of a real density model)."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, 600, 0.1)
    v = 50 + 30 * np.sin(2 * np.pi * t / 120) + rng.uniform(-6, 6, t.size)
    return list(zip(t.tolist(), v.tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_noisy_sequence_does_not_flap(seed: int) -> None:
    seq = _noisy_waves(seed)
    rule = ThresholdRule("crowd", "cam", None, above=60, below=40, for_seconds=3)
    events = _run(AlertEngine([rule]), seq)
    kinds = [e.kind for e in events]
    assert kinds == ["raised", "cleared"] * 5  # one alert per wave, no flapping
    for raised, cleared in zip(events[::2], events[1::2], strict=True):
        assert 45 < cleared.t - raised.t < 60  # raised for a little under half a period
        assert cleared.raised_at == raised.t and cleared.peak >= raised.peak
    # A single threshold on the same data flaps all the time: the band is what helps.
    naive = ThresholdRule("naive", "cam", None, above=60, below=59.999, for_seconds=0)
    assert len(_run(AlertEngine([naive]), seq)) > 50
    assert [(e.kind, e.t) for e in events] == _reference(rule, seq)


def _recorded(shared: Path) -> list[tuple[float, float]]:
    path = shared / "videos" / "mall_test_1601-2000_10fps.counts.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open() as f:
        return [(int(r["video_frame_index"]) / 10, float(r["count"])) for r in csv.DictReader(f)]


@pytest.mark.shared
@pytest.mark.parametrize(
    ("above", "below", "hold"), [(35, 30, 2.0), (32, 28, 0.5), (38, 33, 0.0), (30, 20, 4.0)]
)
def test_recorded_mall_sequence(shared: Path, above: float, below: float, hold: float) -> None:
    seq = _recorded(shared)
    assert len(seq) == 400
    rule = ThresholdRule("mall", "mall", None, above, below, hold)
    events = _run(AlertEngine([rule]), seq, stream="mall")
    assert [(e.kind, e.t) for e in events] == _reference(rule, seq)
    values = dict(seq)
    times = [t for t, _ in seq]
    for ev in events:
        assert ev.value == values[ev.t]
        if ev.kind == "raised":
            # Everything from over_since to the raise was over `above`, for the hold time.
            window = [values[t] for t in times if ev.over_since <= t <= ev.t]
            assert min(window) > above and ev.t - ev.over_since >= hold - 1e-9
            assert ev.peak == max(window)
        else:
            # While raised nothing went under `below` before the clearing sample.
            window = [values[t] for t in times if ev.raised_at <= t < ev.t]
            assert min(window) >= below and ev.value < below
    kinds = [e.kind for e in events]
    assert kinds[::2] == ["raised"] * len(kinds[::2])
    assert kinds[1::2] == ["cleared"] * len(kinds[1::2])
    assert events, "the thresholds are chosen so that the recording raises at least once"


samples = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.floats(0, 100, allow_nan=False)),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(steps=samples, above=st.floats(10, 90), gap=st.floats(0.5, 10), hold=st.floats(0, 5))
def test_properties_on_random_sequences(steps, above, gap, hold) -> None:
    t, seq = 0.0, []
    for dt, v in steps:
        t += dt
        seq.append((t, v))
    rule = ThresholdRule("r", "cam", None, above, above - gap, hold)
    events = _run(AlertEngine([rule]), seq)
    kinds = [e.kind for e in events]
    assert kinds == (["raised", "cleared"] * len(kinds))[: len(kinds)]  # alternating
    for ev in events:
        assert (ev.value > above) if ev.kind == "raised" else (ev.value < above - gap)
    assert [(e.kind, e.t) for e in events] == _reference(rule, seq)
