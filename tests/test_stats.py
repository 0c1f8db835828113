"""Statistics: counters, the min/max/mdev window (iputils ping's formulas), histograms."""

from __future__ import annotations

import math
import random

import pytest

from exporter.stats import (
    OUTAGE_MIN_PROBES,
    OUTAGE_MIN_SECONDS,
    RTT_BUCKETS_SECONDS,
    Histogram,
    PeerStats,
    window_summary,
)


def iputils_summary(rtts: list[float]) -> tuple[float, float, float]:
    """What iputils ping prints as min/avg/max/mdev, written as ping.c computes it."""
    tsum = tsum2 = 0.0
    tmin, tmax = math.inf, 0.0
    for rtt in rtts:
        tsum += rtt
        tsum2 += rtt * rtt
        tmin = min(tmin, rtt)
        tmax = max(tmax, rtt)
    n = len(rtts)
    avg = tsum / n
    mdev = math.sqrt(tsum2 / n - avg * avg)
    return tmin, tmax, mdev


@pytest.mark.parametrize(
    "rtts",
    [[1.0], [0.5, 0.7, 0.6, 2.5], [0.041, 0.044, 0.039, 0.052, 0.047], [10.0] * 5],
)
def test_window_summary_matches_iputils(rtts: list[float]) -> None:
    assert window_summary(rtts) == pytest.approx(iputils_summary(rtts), abs=1e-9)


def test_losses_are_left_out_and_no_reply_means_no_summary() -> None:
    assert window_summary([math.nan, 1.0, math.nan, 3.0]) == pytest.approx((1.0, 3.0, 1.0))
    assert window_summary([math.nan] * 3) is None
    stats = PeerStats(window=4)
    assert stats.window_summary() is None  # a new peer has no min/max/mdev
    for _ in range(4):
        stats.record_loss(0)
    assert stats.window_summary() is None  # total loss: absent, never 0


def test_window_keeps_only_the_last_probes() -> None:
    stats = PeerStats(window=3)
    for rtt in (9.0, 1.0, 2.0, 3.0):
        stats.record_reply(rtt, 0)
    assert stats.window_summary() == pytest.approx(iputils_summary([1.0, 2.0, 3.0]))
    for _ in range(3):
        stats.record_loss(0)
    assert stats.window_summary() is None


def test_counters_count_each_resolved_probe_once() -> None:
    stats = PeerStats(window=30)
    stats.record_reply(2.0, 0)
    stats.record_reply(4.0, 0)
    stats.record_loss(0)
    assert stats.counters() == (3, 2, 6.0, 20.0)
    # mean and mdev over the whole run follow from the counters, as PromQL computes them
    _sent, received, total, squares = stats.counters()
    mean = total / received
    assert math.sqrt(squares / received - mean * mean) == pytest.approx(1.0)


def test_histograms_get_every_reply_and_cumulate() -> None:
    aggregate = Histogram()
    stats = PeerStats(window=5, aggregate=aggregate, per_peer_histogram=True)
    for rtt_ms in (0.04, 0.2, 0.2, 3.0, 7000.0):
        stats.record_reply(rtt_ms, 0)
    for histogram in (aggregate, stats.histogram):
        assert histogram is not None
        buckets, total = histogram.cumulative()
        as_dict = dict(buckets)
        assert as_dict["5e-05"] == 1  # 40 µs is in the first bucket (≤ 50 µs)
        assert as_dict["0.00025"] == 3
        assert as_dict["0.005"] == 4
        assert as_dict["5.0"] == 4 and as_dict["+Inf"] == 5  # 7 s only in +Inf
        assert [le for le, _ in buckets][:-1] == [repr(b) for b in RTT_BUCKETS_SECONDS]
        assert total == pytest.approx((0.04 + 0.2 + 0.2 + 3.0 + 7000.0) / 1000)


SECOND = 1_000_000_000


def run_outage(stats: PeerStats, lost: int, interval_s: float, start_ns: int = 0) -> int:
    """``lost`` probes lost in a row every ``interval_s``, then one answered; returns
    when the next probe would go."""
    at = start_ns
    for _ in range(lost):
        stats.record_loss(at)
        at += int(interval_s * SECOND)
    stats.record_reply(1.0, at)
    return at + int(interval_s * SECOND)


def test_an_outage_is_counted_with_its_length_when_replies_come_back() -> None:
    stats = PeerStats(window=30)
    stats.record_reply(1.0, 0)
    # 15 s without a reply at one probe a second, then answered again
    run_outage(stats, lost=15, interval_s=1.0, start_ns=SECOND)
    count, seconds = stats.outage_totals()
    assert count == 1
    assert seconds == pytest.approx(15.0)
    assert stats.counters()[:2] == (17, 2)  # and the probes count as loss, as always


def test_an_outage_still_going_on_is_not_counted_yet() -> None:
    stats = PeerStats(window=30)
    for second in range(60):
        stats.record_loss(second * SECOND)
    assert stats.outage_totals() == (0, 0.0)


@pytest.mark.parametrize(
    ("lost", "interval_s", "counted"),
    [
        (OUTAGE_MIN_PROBES - 1, 1.0, False),  # 9 s but too few probes
        (OUTAGE_MIN_PROBES, 1.0, True),
        (
            OUTAGE_MIN_PROBES * 4,
            OUTAGE_MIN_SECONDS / (OUTAGE_MIN_PROBES * 4) * 0.9,
            False,
        ),  # fast probes, too short
        (60, 0.05, True),  # the lab's 50 ms probes: 3 s
    ],
)
def test_an_outage_needs_enough_probes_and_enough_time(
    lost: int, interval_s: float, counted: bool
) -> None:
    stats = PeerStats(window=30)
    run_outage(stats, lost, interval_s)
    assert stats.outage_totals()[0] == (1 if counted else 0)


def test_random_loss_makes_no_outages() -> None:
    """30 % independent loss over a day of one-second probes: runs of 10 are
    vanishingly rare, so a lossy path does not pass for a flickering one."""
    rng = random.Random(7)
    stats = PeerStats(window=30)
    for second in range(86_400):
        if rng.random() < 0.3:
            stats.record_loss(second * SECOND)
        else:
            stats.record_reply(1.0, second * SECOND)
    assert stats.outage_totals()[0] <= 1
