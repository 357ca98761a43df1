"""Signal handling of the node process: SIGINT and SIGTERM only *request* a shutdown.

Light on purpose (no torch, no rclpy): :mod:`.node_main` installs it before the heavy imports, so a signal that
arrives while torch is still importing is honoured as well (the node then starts no work and exits 0).
"""

from __future__ import annotations

import signal
import threading


class ShutdownSignals:
    """SIGINT/SIGTERM handlers that only request a shutdown: no exception is raised in the middle of anything.

    The first signal sets :attr:`requested`; later ones are logged and ignored while the node stops (``ros2
    launch`` and a terminal's Ctrl-C both deliver SIGINT, so two arrive at once). Installed before the node
    exists, so a signal during start-up is honoured too.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.logger = None                                # the node's logger, once there is a node
        for sig in self.SIGNALS:                          # kept until the process exits: a late signal is ignored too
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        again = self.requested.is_set()
        self.requested.set()
        if self.logger is None:
            return
        try:                                                  # a signal handler must never raise
            if again:
                self.logger.warning(f"{name} received again; already shutting down")
            else:
                self.logger.info(f"{name} received: shutting down")
        except Exception:                                     # noqa: BLE001
            pass
