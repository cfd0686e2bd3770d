"""The smoother must mean the same thing at any frame rate and never be poisoned."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crowdcount.streamer.smoothing import Ema


def test_first_sample_passes_through() -> None:
    ema = Ema(tau=2.0)
    assert ema.value("a") is None
    assert ema.update("a", 10.0, 100.0) == 10.0
    assert ema.value("a") == 10.0


def test_step_response_after_one_time_constant() -> None:
    ema = Ema(tau=2.0)
    ema.update("a", 0.0, 0.0)
    v = ema.update("a", 1.0, 2.0)
    assert v == pytest.approx(1 - math.exp(-1))


def test_frame_rate_independent() -> None:
    """Ten samples 0.1 s apart reach the same value as one sample 1 s later."""
    fast, slow = Ema(tau=1.5), Ema(tau=1.5)
    fast.update("s", 0.0, 0.0)
    slow.update("s", 0.0, 0.0)
    for i in range(1, 11):
        v_fast = fast.update("s", 5.0, i * 0.1)
    v_slow = slow.update("s", 5.0, 1.0)
    assert v_fast == pytest.approx(v_slow, rel=1e-9)


def test_streams_are_independent() -> None:
    ema = Ema(tau=1.0)
    ema.update("a", 0.0, 0.0)
    ema.update("b", 100.0, 0.0)
    assert ema.update("a", 10.0, 1.0) < 10.0
    assert ema.value("b") == 100.0


def test_long_gap_jumps_to_new_value() -> None:
    ema = Ema(tau=1.0)
    ema.update("a", 0.0, 0.0)
    assert ema.update("a", 50.0, 1000.0) == pytest.approx(50.0)


def test_non_increasing_time_does_not_move_state() -> None:
    ema = Ema(tau=1.0)
    ema.update("a", 4.0, 10.0)
    assert ema.update("a", 100.0, 10.0) == 4.0
    assert ema.update("a", 100.0, 9.0) == 4.0
    assert ema.value("a") == 4.0


def test_nan_is_ignored() -> None:
    ema = Ema(tau=1.0)
    assert math.isnan(ema.update("a", math.nan, 0.0))  # nothing better to report yet
    ema.update("a", 3.0, 1.0)
    assert ema.update("a", math.nan, 2.0) == 3.0
    assert ema.update("a", 3.0, 3.0) == 3.0


def test_zero_tau_disables_smoothing() -> None:
    ema = Ema(tau=0.0)
    ema.update("a", 1.0, 0.0)
    assert ema.update("a", 7.0, 0.01) == 7.0


def test_reset() -> None:
    ema = Ema(tau=1.0)
    ema.update("a", 1.0, 0.0)
    ema.update("b", 2.0, 0.0)
    ema.reset("a")
    assert ema.value("a") is None and ema.value("b") == 2.0
    ema.reset()
    assert ema.value("b") is None


def test_rejects_non_finite_tau() -> None:
    with pytest.raises(ValueError):
        Ema(tau=math.inf)


@given(
    st.lists(
        st.tuples(st.floats(0.001, 10.0), st.floats(-1e6, 1e6)),
        min_size=1,
        max_size=50,
    )
)
def test_output_stays_within_input_range(samples: list[tuple[float, float]]) -> None:
    ema = Ema(tau=0.7)
    t = 0.0
    lo, hi = math.inf, -math.inf
    for dt, v in samples:
        t += dt
        lo, hi = min(lo, v), max(hi, v)
        out = ema.update("s", v, t)
        assert lo - 1e-6 <= out <= hi + 1e-6


def test_concurrent_updates_do_not_corrupt() -> None:
    ema = Ema(tau=1.0)

    def work(sid: str) -> None:
        for i in range(2000):
            ema.update(sid, 1.0, float(i))

    threads = [threading.Thread(target=work, args=(f"s{k}",)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(4):
        assert ema.value(f"s{k}") == pytest.approx(1.0)
