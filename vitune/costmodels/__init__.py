"""Latency sources: where a candidate's ``latency_ms`` comes from.

The search asks a :class:`LatencySource` for a candidate's latency and gets a
:class:`~vitune.targets.measure.Measurement` back. ``measured`` compiles and times the candidate
through TVM on the target; predicted sources (cost models) plug in under other names without
the search changing.
"""

from vitune.costmodels.base import (
    LatencySource,
    MeasuredLatency,
    get_latency_source,
    latency_source_class,
    latency_sources,
    register_latency_source,
)
from vitune.costmodels import predicted as _predicted  # noqa: F401  (registers lut, learned, analytical)

__all__ = ["LatencySource", "MeasuredLatency", "get_latency_source", "latency_source_class", "latency_sources", "register_latency_source"]
