"""Stage 2 — processors: GenAI dialects -> one usage record per LLM call, with tenant, request and price.

Receives ``receiver.StagedSpan``; hands on ``Settlement`` (priced ``UsageRecord``s per settled trace).
"""

from processors._attribution import LinkedContext, LinkResolver, TraceResult, TraceSummary, attribute_trace
from processors._columns import records_table
from processors._record import ComponentPrice, UsageRecord
from processors._settler import Settlement, SettlementSink, Settler, SpanSource
from processors.config import IdentityConfig, ProcessorsConfig

__all__ = [
    "ComponentPrice",
    "IdentityConfig",
    "LinkResolver",
    "LinkedContext",
    "ProcessorsConfig",
    "Settlement",
    "SettlementSink",
    "Settler",
    "SpanSource",
    "TraceResult",
    "TraceSummary",
    "UsageRecord",
    "attribute_trace",
    "records_table",
]
