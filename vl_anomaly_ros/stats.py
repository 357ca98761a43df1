"""Frame accounting and timing statistics of the node (pure Python, thread-safe).

Invariant (checked by the tests): ``received = processed + dropped + rejected + in_flight``, where ``in_flight``
counts frames waiting in the queue or being processed. Every count has a reason: drops are by design
(``superseded``, ``queue_full``, ``stale``, ``shutdown``, ``inactive``, ``disabled``), rejections are bad input or failures
(``encoding``, ``empty``, ``too_large``, ``step``, ``truncated``, ``decode``, ``inference_error`` …).
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np


class FrameStats:
    """Counters by reason plus sliding windows of latencies and processing times."""

    def __init__(self, window: int = 1000, rate_window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped: collections.Counter = collections.Counter()
        self.rejected: collections.Counter = collections.Counter()
        self.last_rejection = ""
        self.events: collections.Counter = collections.Counter()   # input anomalies that do not stop a frame
        self._latency_ms: collections.deque = collections.deque(maxlen=window)
        self._age_ms: collections.deque = collections.deque(maxlen=window)
        self._window = window
        self._stage_ms: dict[str, collections.deque] = {}
        self._done_times: collections.deque = collections.deque()
        self._rate_window_s = rate_window_s
        self.last_received_monotonic: float | None = None

    def on_received(self) -> None:
        with self._lock:
            self.received += 1
            self.last_received_monotonic = time.monotonic()

    def on_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def on_rejected(self, reason: str, message: str = "") -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.last_rejection = f"{reason}: {message}" if message else reason

    def on_event(self, name: str) -> None:
        """Count an input irregularity that the frame survives (``stamp_backwards``, ``stamp_jump``,
        ``camera_info_mismatch``): reported in diagnostics as ``events.<name>``."""
        with self._lock:
            self.events[name] += 1

    def on_processed(self, latency_ms: float, age_ms: float, stage_ms: dict[str, float]) -> None:
        """One frame published: ``latency_ms`` = publish − receive (queue wait + inference + publishing);
        ``age_ms`` = publish − header.stamp (node clock); ``stage_ms`` = time per stage (e.g. ``wait``,
        ``convert``, ``inference``, ``publish``, ``overlay``)."""
        now = time.monotonic()
        with self._lock:
            self.processed += 1
            self._latency_ms.append(latency_ms)
            self._age_ms.append(age_ms)
            for stage, value in stage_ms.items():
                self._stage_ms.setdefault(stage, collections.deque(maxlen=self._window)).append(value)
            self._done_times.append(now)
            while self._done_times and now - self._done_times[0] > self._rate_window_s:
                self._done_times.popleft()

    def snapshot(self) -> dict:
        """Counters, rate (Hz over the last window) and percentiles (ms) at this instant."""
        now = time.monotonic()
        with self._lock:
            done = [t for t in self._done_times if now - t <= self._rate_window_s]
            rate = 0.0
            if len(done) >= 2:
                rate = (len(done) - 1) / max(done[-1] - done[0], 1e-9)
            out = {
                "received": self.received, "processed": self.processed,
                "dropped": dict(self.dropped), "rejected": dict(self.rejected),
                "dropped_total": sum(self.dropped.values()), "rejected_total": sum(self.rejected.values()),
                "rate_hz": rate, "last_rejection": self.last_rejection, "events": dict(self.events),
                "seconds_since_input": None if self.last_received_monotonic is None
                else now - self.last_received_monotonic,
            }
            series = [("latency_ms", self._latency_ms), ("age_ms", self._age_ms)]
            series += [(f"{stage}_ms", values) for stage, values in self._stage_ms.items()]
            for name, values in series:
                arr = np.asarray(values, dtype=np.float64)
                out[name] = ({"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
                              "max": float(arr.max())} if arr.size else {"p50": None, "p95": None, "max": None})
        out["in_flight"] = out["received"] - out["processed"] - out["dropped_total"] - out["rejected_total"]
        return out


def frame_status(snap: dict, *, configured: bool, error: str, active: bool, no_input_warn_s: float,
                 image_topic: str, enabled: bool = True, configuring: str = "") -> tuple[str, str]:
    """Level (``OK``, ``WARN``, ``ERROR``: names of ``diagnostic_msgs/DiagnosticStatus`` levels) and message of the
    node's frames status, from a :meth:`FrameStats.snapshot` and the node's state (``enabled``: the ``~/enable``
    switch; ``configuring``: what a configure in progress is doing, e.g. building a TensorRT engine)."""
    idle = snap["seconds_since_input"]
    if not configured:
        if error:
            return "ERROR", error
        return "WARN", configuring or "unconfigured (waiting for the configure transition)"
    if not active:
        return "WARN", "configured, inactive"
    if not enabled:
        return "OK", "disabled through ~/enable: the model stays loaded, frames are counted as dropped (disabled)"
    if idle is None or idle > no_input_warn_s:
        return "WARN", (f"no input on {image_topic} " + ("yet" if idle is None else f"for {idle:.1f} s")
                        + " (check topic and QoS)")
    if snap["rejected_total"] and snap["last_rejection"]:
        return "OK", f"processing; last rejection {snap['last_rejection'][:200]}"
    return "OK", "processing"


def diagnostic_values(snap: dict, settings: dict) -> dict[str, str]:
    """The key/value pairs of the frames status: ``settings`` (model, score, queue policy, camera_info state…),
    the frame account (``received = processed + dropped + rejected + in_flight``), drops, rejections and events by
    reason, and p50/p95/max of every timing series (ms)."""
    values = {"received": snap["received"], "processed": snap["processed"], "dropped": snap["dropped_total"],
              "rejected": snap["rejected_total"], "in_flight": snap["in_flight"], "rate_hz": round(snap["rate_hz"], 3),
              **{k: v for k, v in settings.items() if k != "camera_info"},
              "last_rejection": snap["last_rejection"][:200]}
    for group in ("dropped", "rejected", "events"):
        for reason, count in sorted(snap[group].items()):
            values[f"{group}.{reason}"] = count
    if "camera_info" in settings:
        values["camera_info"] = settings["camera_info"]
    for name in [k for k in snap if k.endswith("_ms")]:
        for pct, value in snap[name].items():
            values[f"{name}.{pct}"] = "" if value is None else round(value, 2)
    return {k: str(v) for k, v in values.items()}
