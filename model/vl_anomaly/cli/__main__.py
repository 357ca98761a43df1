"""``python -m vl_anomaly.cli …`` (e.g. under ``torchrun -m vl_anomaly.cli train --config …``)."""

import sys

from . import main

sys.exit(main())
