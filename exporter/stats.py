"""Per-peer probe statistics: the numbers the metric contract exposes.

Counters only ever grow (Prometheus derives loss and mean RTT from their rates
over any window); min/max/mdev describe the last ``window`` probes the way
iputils ``ping`` does. A probe is recorded once, when it resolves (reply or
timeout), so probes still in flight never look like loss.

An *outage* is a run of at least OUTAGE_MIN_PROBES lost probes, sent over at
least OUTAGE_MIN_SECONDS, ended by a reply: a node that vanished for 15 s and
came back leaves a count and a length behind, which a 5-minute loss average
blurs. Random loss almost never makes one (30 % loss: 0.3¹⁰ ≈ 6·10⁻⁶ per probe).

The asyncio loop is the only writer. The HTTP exposition thread reads; it
reads ``received`` before ``sent`` (see :meth:`PeerStats.counters`) and the
writer bumps ``sent`` first, so a reader never sees more replies than probes.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Sequence

# RTT histogram upper bounds, seconds. Starts at 50 µs: inside a data centre
# most RTTs are well under 1 ms, where the usual 5 ms first bucket is useless.
RTT_BUCKETS_SECONDS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


OUTAGE_MIN_PROBES = 10
OUTAGE_MIN_SECONDS = 3.0


class Histogram:
    """A cumulative-at-render RTT histogram (counts per bucket, sum in seconds)."""

    __slots__ = ("counts", "sum_seconds")

    def __init__(self) -> None:
        self.counts = [0] * (len(RTT_BUCKETS_SECONDS) + 1)  # last slot: +Inf
        self.sum_seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(RTT_BUCKETS_SECONDS, seconds)] += 1
        self.sum_seconds += seconds

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        """Buckets as ``(le, cumulative count)`` pairs, +Inf last, and the sum."""
        counts = list(self.counts)
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*RTT_BUCKETS_SECONDS, math.inf), counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out, self.sum_seconds


def window_summary(rtts: Sequence[float]) -> tuple[float, float, float] | None:
    """min, max and mdev (ms) of the replies in a window (NaN = lost); None if no reply.

    mdev is iputils ping's: sqrt(mean(rtt²) - mean(rtt)²).
    """
    replies = [r for r in rtts if r == r]  # NaN != NaN
    if not replies:
        return None
    n = len(replies)
    mean = sum(replies) / n
    mean_sq = sum(r * r for r in replies) / n
    return min(replies), max(replies), math.sqrt(max(mean_sq - mean * mean, 0.0))


class PeerStats:
    """Everything measured for one peer address since it joined the peer table."""

    __slots__ = (
        "_histograms",
        "_lost_run",
        "_lost_since_ns",
        "_window",
        "_window_pos",
        "_window_size",
        "histogram",
        "outage_seconds",
        "outages",
        "received",
        "rtt_ms_squared_sum",
        "rtt_ms_sum",
        "sent",
    )

    def __init__(
        self, window: int, aggregate: Histogram | None = None, per_peer_histogram: bool = False
    ) -> None:
        self.sent = 0
        self.received = 0
        self.rtt_ms_sum = 0.0
        self.rtt_ms_squared_sum = 0.0
        self.outages = 0
        self.outage_seconds = 0.0
        self._lost_run = 0  # probes lost in a row, so far
        self._lost_since_ns = 0  # when the first of them was sent
        # Ring of the last `window` outcomes: RTT in ms, or NaN for a lost probe.
        # Starts all-NaN so a new peer has no min/max/mdev until a reply.
        self._window = array("d", [math.nan]) * window
        self._window_pos = 0
        self._window_size = window
        self.histogram = Histogram() if per_peer_histogram else None
        # Every reply also lands in the source's aggregate histogram for its kind.
        self._histograms = tuple(h for h in (aggregate, self.histogram) if h is not None)

    def record_reply(self, rtt_ms: float, sent_ns: int) -> None:
        """A reply to the probe sent at ``sent_ns`` (wall clock, ns)."""
        # Runs once per reply: written out rather than split into helpers.
        if self._lost_run:
            lost_for = (sent_ns - self._lost_since_ns) / 1e9
            if self._lost_run >= OUTAGE_MIN_PROBES and lost_for >= OUTAGE_MIN_SECONDS:
                self.outage_seconds += lost_for
                self.outages += 1
            self._lost_run = 0
        self.sent += 1
        self.received += 1
        self.rtt_ms_sum += rtt_ms
        self.rtt_ms_squared_sum += rtt_ms * rtt_ms
        position = self._window_pos
        self._window[position] = rtt_ms
        self._window_pos = (position + 1) % self._window_size
        seconds = rtt_ms / 1000.0
        for histogram in self._histograms:
            histogram.observe(seconds)

    def record_loss(self, sent_ns: int) -> None:
        """The probe sent at ``sent_ns`` timed out or could not be sent."""
        if not self._lost_run:
            self._lost_since_ns = sent_ns
        self._lost_run += 1
        self.sent += 1
        position = self._window_pos
        self._window[position] = math.nan
        self._window_pos = (position + 1) % self._window_size

    def counters(self) -> tuple[int, int, float, float]:
        """(sent, received, rtt sum, rtt² sum), read so that received ≤ sent."""
        received = self.received
        rtt_sum = self.rtt_ms_sum
        rtt_sq = self.rtt_ms_squared_sum
        return self.sent, received, rtt_sum, rtt_sq

    def outage_totals(self) -> tuple[int, float]:
        """(outages, their total length in seconds)."""
        seconds = self.outage_seconds
        return self.outages, seconds

    def window_summary(self) -> tuple[float, float, float] | None:
        return window_summary(self._window.tolist())


class StampStats:
    """One peer's STAMP session (exporter.stamp_sender): what was sent, what reached the
    peer's reflector, what came back, and the round trips.

    ``reached`` comes from the stateful reflector's sequence numbers. A reply with
    sender sequence s and reflector sequence r, after the newest earlier reply
    (s0, r0), says that r - r0 more packets reached the reflector. It never counts
    more than the s + 1 packets this session has sent (a session this one resumed
    after the peer left and came back is numbered ahead); a reflector that
    restarted numbers from 0 again (r < r0), and then only what the new numbering
    vouches for, r + 1, at most s - s0, is counted. Replies reordered on the way
    back add nothing themselves; the next newer one counts what they would have.
    Packets after the newest reply are counted when the next one arrives, so
    ``reached`` trails ``sent`` by up to a probe's timeout (a reply later than the
    timeout is counted lost: reverse loss, though the delay may have been either
    way); PromQL rates over minutes do not see that, and the exposition never
    shows more reached than sent, nor fewer than received.
    """

    __slots__ = (
        "_last_reflector_sequence",
        "_last_sender_sequence",
        "_next_sequence",
        "reached",
        "received",
        "rtt_ms_sum",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.reached = 0
        self.received = 0
        self.rtt_ms_sum = 0.0
        self._next_sequence = 0
        self._last_sender_sequence = -1
        self._last_reflector_sequence = -1

    def next_sequence(self) -> int:
        """The session's next sender sequence number (from 0, one per packet)."""
        sequence = self._next_sequence
        self._next_sequence = (sequence + 1) & 0xFFFFFFFF
        return sequence

    def record_reply(self, sender_sequence: int, reflector_sequence: int, rtt_ms: float) -> None:
        sent_since = sender_sequence - self._last_sender_sequence
        if sent_since > 0:  # the newest reply so far (an older one, reordered, adds nothing)
            arrived = reflector_sequence - self._last_reflector_sequence
            if arrived <= 0:  # the reflector numbers from 0 again: it restarted
                arrived = min(reflector_sequence + 1, sent_since)
            self.reached = min(self.reached + arrived, sender_sequence + 1)
            self._last_sender_sequence = sender_sequence
            self._last_reflector_sequence = reflector_sequence
        self.sent += 1
        self.received += 1
        self.rtt_ms_sum += max(rtt_ms, 0.0)

    def record_loss(self) -> None:
        self.sent += 1

    def counters(self) -> tuple[int, int, int, float]:
        """(sent, reached, received, rtt sum), read so that received ≤ reached ≤ sent."""
        received = self.received
        rtt_sum = self.rtt_ms_sum
        reached = self.reached
        sent = self.sent
        return sent, max(received, min(reached, sent)), received, rtt_sum


class LargeStats:
    """One peer's path-MTU probes: echo requests as large as the route to the peer
    allows (``size``, whole IP packet), never fragmented. ``refused`` are the ones
    this node's kernel would not send (EMSGSIZE: it already knows the path is
    narrower); they are counted in ``sent`` and never as received, but they are not
    loss on the wire: lost = sent - received - refused."""

    __slots__ = ("received", "refused", "sent", "size")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.refused = 0
        self.size = 0  # bytes of the IP packet probed now; 0 until scheduled

    def record_reply(self) -> None:
        self.sent += 1
        self.received += 1

    def record_loss(self) -> None:
        self.sent += 1

    def record_refused(self) -> None:
        self.sent += 1
        self.refused += 1

    def counters(self) -> tuple[int, int, int, int]:
        """(sent, received, refused, size), read so that received + refused ≤ sent."""
        received = self.received
        refused = self.refused
        return self.sent, received, refused, self.size
