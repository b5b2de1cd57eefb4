"""Service counters and their Prometheus text rendering (`GET /metrics`).

`Stats` is what the ingest and settlement code fill from their threads: every method takes a
lock, so a scrape sees a consistent snapshot. Ack latencies are kept in a bounded ring (the
most recent `latency_samples_max`), so the p99 follows the service's current behaviour and the
memory never grows; counts and sums are kept in full for the Prometheus summary.
"""
import math
import re
import threading

_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_REASONS_MAX = 64
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class Stats:
    """Thread-safe ingest and settlement counters; `snapshot()` is what `/metrics` renders."""

    def __init__(self, latency_samples_max=4096):
        if type(latency_samples_max) is not int or latency_samples_max <= 0:
            raise ValueError("latency_samples_max must be a positive integer")
        self._lock = threading.Lock()
        self._accepted = 0
        self._rejected = {}
        self._ingest_lag_s = 0.0
        self._latencies_ms = [0.0] * latency_samples_max
        self._latency_next = 0
        self._latency_count = 0
        self._latency_sum_ms = 0.0
        self._interval_close_s = 0.0
        self._intervals_closed = 0

    def record_accepted(self, count=1):
        _check_count(count)
        with self._lock:
            self._accepted += count

    def record_rejected(self, reason, count=1):
        """Count refused records by reason (`bad_signature`, `unknown_device`, `gap`, …).

        Reasons are label values: snake_case, at most 64 distinct ones (more are counted under
        `other`), so a flood of odd reasons cannot blow up the scrape.
        """
        _check_count(count)
        if not isinstance(reason, str) or not _REASON.fullmatch(reason):
            raise ValueError(f"reason must be snake_case (a-z, 0-9, _), got {reason!r}")
        with self._lock:
            if reason not in self._rejected and len(self._rejected) >= _REASONS_MAX:
                reason = "other"
            self._rejected[reason] = self._rejected.get(reason, 0) + count

    def set_ingest_lag_s(self, lag_s):
        """Event time of the newest settled record behind the wall clock, in seconds."""
        with self._lock:
            self._ingest_lag_s = _check_number("lag_s", lag_s)

    def observe_ack_latency_ms(self, latency_ms):
        """Receipt of a record to its ack being published, in milliseconds."""
        latency_ms = _check_number("latency_ms", latency_ms)
        with self._lock:
            self._latencies_ms[self._latency_next] = latency_ms
            self._latency_next = (self._latency_next + 1) % len(self._latencies_ms)
            self._latency_count += 1
            self._latency_sum_ms += latency_ms

    def observe_interval_close_s(self, duration_s):
        """How long the last interval close (settle + checkpoint) took, in seconds."""
        duration_s = _check_number("duration_s", duration_s)
        with self._lock:
            self._interval_close_s = duration_s
            self._intervals_closed += 1

    def snapshot(self):
        with self._lock:
            held = min(self._latency_count, len(self._latencies_ms))
            samples = sorted(self._latencies_ms[:held])
            return {
                "accepted": self._accepted,
                "rejected_by_reason": dict(self._rejected),
                "ingest_lag_s": self._ingest_lag_s,
                "ack_latency_ms_p99": _percentile(samples, 99),
                "ack_latency_count": self._latency_count,
                "ack_latency_sum_ms": self._latency_sum_ms,
                "interval_close_s": self._interval_close_s,
                "intervals_closed": self._intervals_closed,
            }


def _check_count(count):
    if type(count) is not int or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")


def _check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return float(value)


def _percentile(sorted_samples, percent):
    """Nearest-rank percentile (0.0 without samples)."""
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def escape_label(value):
    """Prometheus text format: backslash, double quote and newline are escaped in label values."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value):
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Builds one scrape: each metric family once, with its HELP and TYPE lines first."""

    def __init__(self):
        self._families = {}

    def add(self, name, kind, help_text, value, labels=None):
        if not _METRIC.fullmatch(name) or kind not in ("counter", "gauge", "summary"):
            raise ValueError(f"bad metric {name!r} ({kind})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return  # a missing or odd value in a stats snapshot is skipped, never a 500
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append((name, labels or {}, value))

    def add_sample(self, family_name, sample_name, value, labels=None):
        """An extra sample of a family (a summary's `_sum` and `_count`)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        self._families[family_name][2].append((sample_name, labels or {}, value))

    def render(self):
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for sample_name, labels, value in samples:
                label_text = ",".join(f'{key}="{escape_label(val)}"'
                                      for key, val in sorted(labels.items()))
                label_text = f"{{{label_text}}}" if label_text else ""
                lines.append(f"{sample_name}{label_text} {_number(value)}")
        return "\n".join(lines) + "\n"


def add_stats(exposition, snapshot):
    """Render a `Stats.snapshot()` (or any dict with the same keys) into `exposition`."""
    exposition.add("energo_records_accepted_total", "counter",
                   "Signed records verified and settled.", snapshot.get("accepted"))
    rejected = snapshot.get("rejected_by_reason") or {}
    if isinstance(rejected, dict):
        for reason in sorted(rejected, key=str):
            exposition.add("energo_records_rejected_total", "counter",
                           "Records refused, by reason.", rejected[reason], {"reason": reason})
    exposition.add("energo_ingest_lag_seconds", "gauge",
                   "Wall clock minus the event time of the newest settled record.",
                   snapshot.get("ingest_lag_s"))
    p99_ms = snapshot.get("ack_latency_ms_p99")
    if isinstance(p99_ms, int | float) and not isinstance(p99_ms, bool):
        exposition.add("energo_ack_latency_seconds", "summary",
                       "Record receipt to ack publication.", p99_ms / 1000, {"quantile": "0.99"})
        count = snapshot.get("ack_latency_count")
        sum_ms = snapshot.get("ack_latency_sum_ms")
        if isinstance(count, int) and isinstance(sum_ms, int | float):
            exposition.add_sample("energo_ack_latency_seconds", "energo_ack_latency_seconds_sum",
                                  sum_ms / 1000)
            exposition.add_sample("energo_ack_latency_seconds",
                                  "energo_ack_latency_seconds_count", count)
    exposition.add("energo_interval_close_seconds", "gauge",
                   "Duration of the last interval close (settlement and checkpoint).",
                   snapshot.get("interval_close_s"))
    exposition.add("energo_intervals_closed_total", "counter",
                   "Intervals closed by this process.", snapshot.get("intervals_closed"))


class HttpStats:
    """Requests served by the API, by route template and status (bounded: routes are fixed)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = {}
        self._duration_s = {}
        self.dropped_connections = 0

    def observe(self, method, route, status, duration_s):
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            self._duration_s[(method, route)] = self._duration_s.get((method, route), 0.0) + duration_s

    def count_dropped(self):
        with self._lock:
            self.dropped_connections += 1

    def add_to(self, exposition):
        with self._lock:
            requests = dict(self._requests)
            durations = dict(self._duration_s)
            dropped = self.dropped_connections
        for (method, route, status), count in sorted(requests.items()):
            exposition.add("energo_http_requests_total", "counter", "HTTP requests answered.",
                           count, {"method": method, "route": route, "status": str(status)})
        for (method, route), seconds in sorted(durations.items()):
            exposition.add("energo_http_request_seconds_total", "counter",
                           "Time spent answering HTTP requests.", seconds,
                           {"method": method, "route": route})
        exposition.add("energo_http_dropped_connections_total", "counter",
                       "Connections refused because every API worker was busy.", dropped)
