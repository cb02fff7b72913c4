"""Prometheus text exposition (format 0.0.4) for the server, without a client library.

Counters, gauges and histograms with labels, kept in plain dicts under one lock: the event loop
and the model threads both update them, and `/metrics` renders a consistent snapshot.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field
from typing import Iterable

LabelKey = tuple[tuple[str, str], ...]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _key(labels: dict[str, str] | None) -> LabelKey:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(key: LabelKey, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = list(key) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class _HistogramSeries:
    bucket_counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class Metric:
    """One metric family: name, help text, type and its series by label set."""

    name: str
    help: str
    kind: str  # "counter" | "gauge" | "histogram"
    buckets: tuple[float, ...] = ()
    labelled: bool = False  # an unlabelled family shows 0 before its first update
    values: dict[LabelKey, float] = field(default_factory=dict)
    histograms: dict[LabelKey, _HistogramSeries] = field(default_factory=dict)


class MetricsRegistry:
    """The server's metrics; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Metric] = {}

    def _family(
        self, name: str, help: str, kind: str, buckets: tuple[float, ...] = (), labelled: bool = False
    ) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Metric(name, help, kind, tuple(buckets), labelled)
        elif metric.kind != kind:
            raise ValueError(f"metric {name} is a {metric.kind}, not a {kind}")
        return metric

    def counter(self, name: str, help: str, labelled: bool = False) -> None:
        with self._lock:
            self._family(name, help, "counter", labelled=labelled)

    def gauge(self, name: str, help: str, labelled: bool = False) -> None:
        with self._lock:
            self._family(name, help, "gauge", labelled=labelled)

    def histogram(self, name: str, help: str, buckets: Iterable[float], labelled: bool = False) -> None:
        with self._lock:
            self._family(name, help, "histogram", tuple(sorted(buckets)), labelled)

    def inc(self, name: str, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            metric = self._metrics[name]
            key = _key(labels)
            metric.values[key] = metric.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            self._metrics[name].values[_key(labels)] = float(value)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            metric = self._metrics[name]
            key = _key(labels)
            series = metric.histograms.get(key)
            if series is None:
                series = metric.histograms[key] = _HistogramSeries([0] * len(metric.buckets))
            index = bisect.bisect_left(metric.buckets, value)  # first bucket with bound >= value
            if index < len(metric.buckets):
                series.bucket_counts[index] += 1
            series.total += float(value)
            series.count += 1

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A counter's or gauge's current value (0 when never set)."""
        with self._lock:
            return self._metrics[name].values.get(_key(labels), 0.0)

    def histogram_totals(self, name: str, labels: dict[str, str] | None = None) -> tuple[int, float]:
        """(count, sum) of a histogram series."""
        with self._lock:
            series = self._metrics[name].histograms.get(_key(labels))
            return (0, 0.0) if series is None else (series.count, series.total)

    def render(self) -> str:
        """Every metric in the Prometheus text format."""
        lines: list[str] = []
        with self._lock:
            for metric in self._metrics.values():
                lines.append(f"# HELP {metric.name} {metric.help}")
                lines.append(f"# TYPE {metric.name} {metric.kind}")
                if metric.kind != "histogram":
                    series = metric.values or ({} if metric.labelled else {(): 0.0})
                    for key, value in sorted(series.items()):
                        lines.append(f"{metric.name}{_labels_text(key)} {_number(value)}")
                    continue
                histograms = metric.histograms
                if not histograms and not metric.labelled:
                    histograms = {(): _HistogramSeries([0] * len(metric.buckets))}
                for key, hist in sorted(histograms.items()):
                    cumulative = 0
                    for bound, count in zip(metric.buckets, hist.bucket_counts):
                        cumulative += count
                        lines.append(f"{metric.name}_bucket{_labels_text(key, [('le', _number(bound))])} {cumulative}")
                    lines.append(f"{metric.name}_bucket{_labels_text(key, [('le', '+Inf')])} {hist.count}")
                    lines.append(f"{metric.name}_sum{_labels_text(key)} {_number(hist.total)}")
                    lines.append(f"{metric.name}_count{_labels_text(key)} {hist.count}")
        return "\n".join(lines) + "\n"


def server_metrics() -> MetricsRegistry:
    """The registry with every metric `lunakit serve` reports, declared up front."""
    registry = MetricsRegistry()
    registry.counter("lunakit_requests_total", "HTTP requests answered, by route and status code.", labelled=True)
    registry.histogram(
        "lunakit_request_duration_seconds",
        "Time from request start to response, by route.",
        LATENCY_BUCKETS_S,
        labelled=True,
    )
    registry.gauge("lunakit_requests_in_flight", "Requests being handled now.")
    registry.gauge("lunakit_queue_depth", "Classification requests waiting for the batcher.")
    registry.histogram("lunakit_batch_size_crops", "Crops per model call of the dynamic batcher.", BATCH_SIZE_BUCKETS)
    registry.histogram(
        "lunakit_batch_size_requests", "Requests per model call of the dynamic batcher.", BATCH_SIZE_BUCKETS
    )
    registry.histogram("lunakit_batch_duration_seconds", "Model time per batch.", LATENCY_BUCKETS_S)
    registry.counter("lunakit_rejected_total", "Requests refused with 503 because the queue was full.")
    registry.counter("lunakit_cancelled_total", "Queued classification requests whose client had gone.")
    registry.counter("lunakit_crops_total", "Crops classified.")
    registry.gauge("lunakit_ready", "1 when the models are loaded and the server takes requests.")
    registry.gauge("lunakit_analyses_in_progress", "Whole-scan analyses running or waiting.")
    return registry
