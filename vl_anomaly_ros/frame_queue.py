"""Hand-off of frames from the executor thread to the inference thread, with every drop reported.

Two policies for frames that arrive faster than inference:

* ``latest`` (default, what planners want): one slot; a new frame replaces the waiting one, and the replaced
  frame is dropped with reason ``superseded``. Latency stays at about one inference time.
* ``queue``: up to ``depth`` frames wait in arrival order; when full, the *oldest* waiting frame is dropped with
  reason ``queue_full``. Latency grows to ``depth`` inference times under overload.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

POLICIES = ("latest", "queue")


class FrameQueue:
    """Thread-safe bounded queue. ``on_drop(item, reason)`` is called (outside the lock) for every dropped item."""

    def __init__(self, policy: str = "latest", depth: int = 1,
                 on_drop: Callable[[Any, str], None] | None = None) -> None:
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_drop = on_drop or (lambda item, reason: None)
        self.configure(policy, depth)

    def configure(self, policy: str, depth: int) -> None:
        """Change the policy; frames beyond the new capacity are dropped (oldest first)."""
        if policy not in POLICIES:
            raise ValueError(f"queue policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        if depth < 1:
            raise ValueError(f"queue depth must be ≥ 1; got {depth}")
        with self._cond:
            self.policy = policy
            self.capacity = 1 if policy == "latest" else int(depth)
            dropped = self._trim_locked()
        self._report(dropped)

    def put(self, item: Any) -> None:
        """Add a frame; drops (and reports) what no longer fits."""
        with self._cond:
            if self._closed:
                dropped = [(item, "shutdown")]
            else:
                self._items.append(item)
                dropped = self._trim_locked()
                self._cond.notify()
        self._report(dropped)

    def get(self, timeout: float | None = None) -> Any | None:
        """The next frame, or None after ``timeout`` seconds or when closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return None

    def close(self) -> None:
        """Wake the consumer; waiting frames are dropped with reason ``shutdown``."""
        with self._cond:
            self._closed = True
            dropped = [(item, "shutdown") for item in self._items]
            self._items.clear()
            self._cond.notify_all()
        self._report(dropped)

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _trim_locked(self) -> list[tuple[Any, str]]:
        reason = "superseded" if self.policy == "latest" else "queue_full"
        dropped = []
        while len(self._items) > self.capacity:
            dropped.append((self._items.popleft(), reason))
        return dropped

    def _report(self, dropped: list[tuple[Any, str]]) -> None:
        for item, reason in dropped:
            self._on_drop(item, reason)
