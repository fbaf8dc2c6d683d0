"""Where extraction runs: ``local`` (this process: core.extract) or ``ray`` (a Ray cluster).

Both engines embed exactly what the store lacks for (image hash, encoder key), with the same
read, decode and preprocessing, so they store the same vectors; both record an ``embed`` run.

Modules: ``ray_engine`` (Ray Data across a cluster's GPUs or CPUs; named so that it does not
shadow the ``ray`` package), ``shards`` (the Parquet files its vectors pass through on their way
into the store). Importing this package imports neither ray nor torch: Ray is an optional extra.
"""

from __future__ import annotations

from core.errors import EngineUnavailableError, RayJobError

ENGINES = ("local", "pipelined", "ray")
SCALE_EXTRA_HINT = "pip install 'replens[scale]'"


__all__ = ["ENGINES", "SCALE_EXTRA_HINT", "EngineUnavailableError", "RayJobError"]
