"""HdrHistogram helpers: one shape for every latency the bench records."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

# Values are recorded in microseconds, from 1 us to 10 minutes, with 3 significant
# digits: a 0.1% error is far below the noise of a shared machine.
LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_DIGITS = 3

US_PER_MS = 1000.0

# The percentiles reported, by JSON key.
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p999": 99.9}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record a duration given in seconds, clamped into the histogram's range."""
    value = int(seconds * 1_000_000)
    histogram.record_value(min(max(value, LOWEST_US), HIGHEST_US))


def merge_encoded(target: HdrHistogram, encoded: bytes) -> None:
    """Add a histogram sent by ``HdrHistogram.encode()`` from another process."""
    if encoded:
        target.add(HdrHistogram.decode(encoded))


def summary_ms(
    histogram: HdrHistogram, keys: tuple[str, ...] = ("p50", "p99", "p999")
) -> dict[str, float | None]:
    """The chosen percentiles and the maximum, in milliseconds (None when empty)."""
    empty = histogram.get_total_count() == 0
    figures: dict[str, float | None] = {
        key: None if empty else histogram.get_value_at_percentile(PERCENTILES[key]) / US_PER_MS
        for key in keys
    }
    figures["max"] = None if empty else histogram.get_max_value() / US_PER_MS
    return figures
