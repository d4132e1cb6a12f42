"""What every benchmark records about the machine and its load (``python benchmarks/x.py`` puts
this folder on the path, so scripts import it as ``from machine import machine_meta``)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import torch


def machine_meta(threads: int | None = None) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
