"""Entry point of the ``anomaly_node`` executable (``ros2 run vl_anomaly_ros anomaly_node``).

Takes SIGINT/SIGTERM (:class:`~vl_anomaly_ros.shutdown.ShutdownSignals`) *before* importing the node, whose
imports (torch, rclpy) take seconds: a launch file stopped during that time still gets a clean exit, code 0.
"""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> int:
    from .shutdown import ShutdownSignals

    signals = ShutdownSignals()
    from .anomaly_node import main as run_node

    if signals.requested.is_set():                 # stopped while importing: nothing was started
        return 0
    return run_node(args, signals)


if __name__ == "__main__":
    sys.exit(main())
