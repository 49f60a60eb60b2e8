"""Usage records as one Arrow table (the columnar form a Settlement hands to the ledger): built where the records
are made (the main process or a settle worker), so the process writing the ledger does no per-record Python.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa

from processors._record import ComponentPrice, UsageRecord

MONEY = pa.decimal128(38, 12)
"""Costs and rates: 12 decimals, as the ledger's DECIMAL(38,12) (FOCUS allows any precision for cost columns)."""
_Q = Decimal("1e-12")

_PLAIN = (
    "trace_id", "span_id", "request_id", "tenant_id", "tenant_source", "unattributed_reason", "tenant_conflict",
    "user_id", "feature", "environment", "workflow_id", "conversation_id", "agent_name", "service_name",
    "span_name", "provider", "operation", "request_model", "response_model", "response_id", "streamed",
    "usage_status", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "dedup_key", "dedup_rank", "batch", "service_tier", "currency", "pricing_status", "pricing_reason",
    "price_source", "priced_model",
)
_RATE_PARTS = ("input", "cache_read", "cache_write", "output")
# A column at a time, by C-level getters (this runs for every call settled; transposing row tuples allocated more).
_getters = tuple(operator.attrgetter(name) for name in _PLAIN)
_other_getters = tuple(operator.attrgetter(name) for name in (
    "start_time_unix_nano", "end_time_unix_nano", "list_cost", "effective_cost", "list_rates", "effective_rates"))


def _type(name: str) -> pa.DataType:
    if name.endswith("_tokens"):
        return pa.int64()
    if name == "dedup_rank":
        return pa.int32()
    if name in ("tenant_conflict", "streamed", "batch"):
        return pa.bool_()
    return pa.string()


def _money(d: Decimal | None) -> Decimal | None:
    return None if d is None else d.quantize(_Q)


SCHEMA = pa.schema(
    [(name, _type(name)) for name in _PLAIN]
    + [("start_time", pa.timestamp("ns")), ("end_time", pa.timestamp("ns")), ("list_cost", MONEY),
       ("effective_cost", MONEY)]
    + [(f"{prefix}_{part}_per_mtok", MONEY) for prefix in ("list", "effective") for part in _RATE_PARTS]
)
"""The UsageRecord fields as columns; the two rate sets flattened (``list_input_per_mtok``, ...), times as
timestamps (UTC, from the span's start/end)."""


def records_table(records: Sequence[UsageRecord]) -> pa.Table:
    if not records:
        return SCHEMA.empty_table()
    arrays: list[pa.Array] = []
    for name, getter in zip(_PLAIN, _getters, strict=True):
        arrays.append(pa.array(list(map(getter, records)), _type(name)))
    starts, ends, list_costs, eff_costs, list_rates, eff_rates = (
        list(map(g, records)) for g in _other_getters
    )
    arrays.append(pa.array(starts, pa.int64()).cast(pa.timestamp("ns")))
    arrays.append(pa.array(ends, pa.int64()).cast(pa.timestamp("ns")))
    arrays.append(pa.array([_money(c) for c in list_costs], MONEY))
    arrays.append(pa.array([_money(c) for c in eff_costs], MONEY))
    # Rates are shared objects (the pricer reuses a model's rates for a minute): each distinct object is
    # quantized and converted once, and the columns are gathered from those few rows by index.
    index: dict[int, int] = {}
    distinct: list[ComponentPrice] = []

    def slot(rates: ComponentPrice) -> int:
        i = index.get(id(rates))
        if i is None:
            i = index[id(rates)] = len(distinct)
            distinct.append(rates)  # kept alive, so its id stays unique while the dict is in use
        return i

    for rates in (list_rates, eff_rates):
        idx = pa.array([slot(r) for r in rates], pa.int32())
        for part in _RATE_PARTS:
            values = pa.array([_money(getattr(r, f"{part}_per_mtok")) for r in distinct], MONEY)
            arrays.append(values.take(idx))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
