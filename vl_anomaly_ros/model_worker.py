"""The node's model thread: the one thread that runs torch (loading, warm-up, every frame), with bounded stops.

Keeping all torch work on one thread matters on CPUs: libgomp gives every calling thread its own OpenMP team,
and once more teams exist than cores it throttles spinning; a network running on a second thread was measured
1.6–1.8× slower (ESPNetv2, 2 cores; docs/benchmarks.md).

The worker alternates between *jobs* (a function to run on this thread and hand its result back: loading the
model, waiting for the frame in work) and *frames* taken from a :class:`~vl_anomaly_ros.frame_queue.FrameQueue`
while frames are enabled. Every wait of another thread on it is bounded: a caller gets :class:`WorkerTimeout`
(saying what the worker was doing) instead of hanging, so a node can always shut down.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable


class WorkerTimeout(TimeoutError):
    """The model thread did not finish a job within the bounded wait."""


class WorkerStopped(RuntimeError):
    """The model thread has stopped; no job can run on it any more."""


class ModelWorker:
    """A daemon thread running jobs and frames.

    Args:
        frames: the queue frames are taken from (only while :meth:`enable_frames` is on).
        process: called on the worker thread with each frame; must not raise (the node counts failures itself).
        name: thread name (shows in stack dumps).
    """

    def __init__(self, frames, process: Callable[[Any], None], name: str = "vl_anomaly_model") -> None:
        self._frames = frames
        self._process = process
        self._jobs: queue.Queue = queue.Queue()
        self._frames_enabled = threading.Event()
        self._alive = True
        self.doing = "idle"                                   # what the thread is doing now, for shutdown logs
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from other threads
    def call(self, fn: Callable[[], Any], what: str, timeout: float | None = None,
             cancel: Callable[[], bool] | None = None) -> Any:
        """Run ``fn`` on the worker thread and return its result (or raise its exception).

        Args:
            fn: the job.
            what: a few words naming it (``"loading the model"``), kept in :attr:`doing` while it runs.
            timeout: seconds to wait at most (None: no bound); :class:`WorkerTimeout` after that.
            cancel: polled every 0.1 s while waiting; when it returns True the wait ends with
                :class:`WorkerTimeout` (the job itself runs to its end: torch work cannot be interrupted).
        """
        if threading.current_thread() is self._thread:
            return fn()
        if not self.alive():
            raise WorkerStopped(f"the model thread has stopped; cannot run: {what}")
        done = threading.Event()
        box: dict = {}
        self._jobs.put((fn, what, done, box))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(0.1):
            if cancel is not None and cancel():
                raise WorkerTimeout(f"stopped waiting for the model thread ({self.doing}): shutdown requested")
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerTimeout(f"the model thread did not finish within {timeout:.1f} s (it is {self.doing})")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def submit(self, fn: Callable[[], Any], what: str, on_done: Callable[[Any, BaseException | None], None]) -> None:
        """Queue ``fn`` for the worker thread without waiting; ``on_done(result, error)`` is called on the worker
        thread when it has run (between frames, like every job)."""
        if not self.alive():
            raise WorkerStopped(f"the model thread has stopped; cannot run: {what}")
        self._jobs.put((fn, what, None, {"on_done": on_done}))

    def enable_frames(self) -> None:
        """Start taking frames from the queue."""
        self._frames_enabled.set()

    def disable_frames(self, timeout: float) -> bool:
        """Stop taking frames; wait at most ``timeout`` s for the frame in work. True if it finished in time."""
        self._frames_enabled.clear()
        if not self.alive() or threading.current_thread() is self._thread:
            return True
        try:
            self.call(lambda: None, "finishing the frame in work", timeout)
        except (WorkerTimeout, WorkerStopped):
            return False
        return True

    def stop(self, timeout: float) -> bool:
        """End the thread after its current job or frame; wait at most ``timeout`` s. True if it ended."""
        self._frames_enabled.clear()
        self._alive = False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        return self._alive and self._thread.is_alive()

    # ------------------------------------------------------------------ the worker thread
    def _run(self) -> None:
        while self._alive:
            try:
                fn, what, done, box = self._jobs.get_nowait()
            except queue.Empty:
                pass
            else:
                self.doing = what
                try:
                    box["result"] = fn()
                except BaseException as exc:                       # noqa: BLE001 — handed to the caller
                    box["error"] = exc
                self.doing = "idle"
                if done is not None:
                    done.set()
                else:
                    box["on_done"](box.get("result"), box.get("error"))
                continue
            if not self._frames_enabled.is_set():
                time.sleep(0.02)
                continue
            frame = self._frames.get(timeout=0.02)
            if frame is None:
                continue
            self.doing = "processing a frame"
            try:
                self._process(frame)
            finally:
                self.doing = "idle"
