"""FOCUS export: the `focus` view (FOCUS 1.2 columns plus the 1.3 provider columns and x_ columns) and its CSV and
hive-partitioned Parquet writers, streamed in batches so a 10-million-call month needs bounded memory.

Row grain (notes/focus.md §6): UTC charge day × tenant × provider × model × token type × unit price. Token
types: input (uncached input), cache_read, cache_write, output (reasoning included, billed as output).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# Display names: (ServiceProviderName = who we pay, ServiceName). ServiceName maps to one ServiceCategory.
_PROVIDERS = [
    ("openai", "OpenAI", "OpenAI API"),
    ("anthropic", "Anthropic", "Anthropic API"),
    ("aws.bedrock", "Amazon Web Services", "Amazon Bedrock"),
    ("azure.ai.openai", "Microsoft", "Azure OpenAI"),
    ("azure.ai.inference", "Microsoft", "Azure AI Inference"),
    ("gcp.vertex_ai", "Google Cloud", "Vertex AI"),
    ("gcp.gemini", "Google", "Gemini API"),
    ("gcp.gen_ai", "Google", "Google Gen AI"),
    ("mistral_ai", "Mistral AI", "Mistral API"),
    ("x_ai", "xAI", "xAI API"),
    ("deepseek", "DeepSeek", "DeepSeek API"),
    ("groq", "Groq", "GroqCloud"),
    ("cohere", "Cohere", "Cohere API"),
    ("perplexity", "Perplexity", "Perplexity API"),
    ("ibm.watsonx.ai", "IBM", "watsonx.ai"),
]
_PROVIDER_VALUES = ", ".join(f"('{k}', '{n}', '{s}')" for k, n, s in _PROVIDERS)

# One row per call and token component; NULL rates mean the call could not be priced.
# Calls first grouped with all their rates (10 M calls -> a few hundred thousand groups), then unpivoted into token
# components: unpivoting every call first made the export's aggregation four times larger (bench/README.md).
_GROUPED = """
    SELECT date_trunc('day', start_time) AS day, tenant_id, coalesce(provider, 'unknown') AS provider,
           coalesce(priced_model, response_model, request_model, 'unknown') AS model, pricing_status,
           list_input_per_mtok, effective_input_per_mtok, list_cache_read_per_mtok, effective_cache_read_per_mtok,
           list_cache_write_per_mtok, effective_cache_write_per_mtok, list_output_per_mtok, effective_output_per_mtok,
           min(price_source) AS price_source, min(unattributed_reason) AS unattributed_reason,
           sum(input_tokens - coalesce(cache_read_tokens, 0) - coalesce(cache_write_tokens, 0))
               FILTER (WHERE input_tokens - coalesce(cache_read_tokens, 0) - coalesce(cache_write_tokens, 0) > 0)
               AS q_input,
           count(*) FILTER (WHERE input_tokens - coalesce(cache_read_tokens, 0) - coalesce(cache_write_tokens, 0) > 0)
               AS n_input,
           sum(cache_read_tokens) FILTER (WHERE cache_read_tokens > 0) AS q_cache_read,
           count(*) FILTER (WHERE cache_read_tokens > 0) AS n_cache_read,
           sum(cache_write_tokens) FILTER (WHERE cache_write_tokens > 0) AS q_cache_write,
           count(*) FILTER (WHERE cache_write_tokens > 0) AS n_cache_write,
           sum(output_tokens) FILTER (WHERE output_tokens > 0) AS q_output,
           count(*) FILTER (WHERE output_tokens > 0) AS n_output
    FROM calls WHERE NOT is_duplicate AND list_cost IS NOT NULL GROUP BY ALL
"""

# One row per group and token component with tokens; NULL rates mean the call could not be priced.
_COMPONENTS = f"""
    SELECT g.day, g.tenant_id, g.provider, g.model, g.pricing_status, g.price_source, g.unattributed_reason,
           t.token_type, t.quantity, t.list_rate, t.effective_rate, t.calls
    FROM ({_GROUPED}) g, LATERAL (VALUES
        ('input', g.q_input, g.list_input_per_mtok, g.effective_input_per_mtok, g.n_input),
        ('cache_read', g.q_cache_read, g.list_cache_read_per_mtok, g.effective_cache_read_per_mtok, g.n_cache_read),
        ('cache_write', g.q_cache_write, g.list_cache_write_per_mtok, g.effective_cache_write_per_mtok,
         g.n_cache_write),
        ('output', g.q_output, g.list_output_per_mtok, g.effective_output_per_mtok, g.n_output)
    ) t(token_type, quantity, list_rate, effective_rate, calls)
    WHERE t.calls > 0
"""

FOCUS_VIEW_SQL = f"""
CREATE OR REPLACE VIEW focus AS
WITH prov(key, pname, sname) AS (VALUES {_PROVIDER_VALUES}),
priced AS (
    SELECT day, tenant_id, provider, model, token_type, list_rate, effective_rate, pricing_status,
           min(price_source) AS price_source, CAST(sum(quantity) AS DECIMAL(38, 0)) AS quantity,
           CAST(sum(calls) AS BIGINT) AS calls, min(unattributed_reason) AS unattributed_reason
    FROM ({_COMPONENTS}) GROUP BY ALL
),
unpriced AS (
    -- Calls that could not be priced are still reported (cost 0 is flagged, never silent): no SKU price,
    -- so quantities and unit prices are NULL as FOCUS requires; the tokens are in x_UnpricedTokens.
    SELECT date_trunc('day', start_time) AS day, tenant_id, coalesce(provider, 'unknown') AS provider,
           coalesce(response_model, request_model, 'unknown') AS model, 'unpriced' AS token_type,
           CAST(NULL AS DECIMAL(38, 12)) AS list_rate, CAST(NULL AS DECIMAL(38, 12)) AS effective_rate,
           pricing_status, NULL AS price_source, CAST(NULL AS DECIMAL(38, 0)) AS quantity,
           count(*) AS calls, min(unattributed_reason) AS unattributed_reason,
           sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS unpriced_tokens
    FROM calls WHERE NOT is_duplicate AND list_cost IS NULL GROUP BY ALL
),
rows AS (
    SELECT *, NULL::BIGINT AS unpriced_tokens FROM priced
    UNION ALL BY NAME SELECT * FROM unpriced
)
SELECT
    CAST(coalesce(quantity * effective_rate * 0.000001, 0) AS DECIMAL(38, 18)) AS BilledCost,
    r.day + INTERVAL 1 DAY AS ChargePeriodEnd,
    r.day AS ChargePeriodStart,
    date_trunc('month', r.day) + INTERVAL 1 MONTH AS BillingPeriodEnd,
    date_trunc('month', r.day) AS BillingPeriodStart,
    'USD' AS BillingCurrency,
    'Usage' AS ChargeCategory,
    NULL AS ChargeClass,
    model || ' ' || replace(token_type, '_', ' ') || ' tokens' AS ChargeDescription,
    'Usage-Based' AS ChargeFrequency,
    NULL AS CommitmentDiscountStatus,
    quantity AS ConsumedQuantity,
    CASE WHEN quantity IS NOT NULL THEN 'Tokens' END AS ConsumedUnit,
    CAST(coalesce(quantity * effective_rate * 0.000001, 0) AS DECIMAL(38, 18)) AS ContractedCost,
    effective_rate AS ContractedUnitPrice,
    CAST(coalesce(quantity * effective_rate * 0.000001, 0) AS DECIMAL(38, 18)) AS EffectiveCost,
    coalesce(p.pname, r.provider) AS HostProviderName,
    coalesce(p.pname, r.provider) AS InvoiceIssuerName,
    CAST(coalesce(quantity * list_rate * 0.000001, 0) AS DECIMAL(38, 18)) AS ListCost,
    list_rate AS ListUnitPrice,
    CASE WHEN quantity IS NULL THEN NULL WHEN pricing_status = 'contract' THEN 'Other' ELSE 'Standard' END
        AS PricingCategory,
    CASE WHEN quantity IS NOT NULL THEN 'USD' END AS PricingCurrency,
    effective_rate AS PricingCurrencyContractedUnitPrice,
    CAST(coalesce(quantity * effective_rate * 0.000001, 0) AS DECIMAL(38, 18)) AS PricingCurrencyEffectiveCost,
    list_rate AS PricingCurrencyListUnitPrice,
    CAST(quantity * 0.000001 AS DECIMAL(38, 6)) AS PricingQuantity,
    CASE WHEN quantity IS NOT NULL THEN '1000000 Tokens' END AS PricingUnit,
    coalesce(p.pname, r.provider) AS ProviderName,
    coalesce(p.pname, r.provider) AS PublisherName,
    'AI and Machine Learning' AS ServiceCategory,
    coalesce(p.sname, r.provider) AS ServiceName,
    coalesce(p.pname, r.provider) AS ServiceProviderName,
    'Generative AI' AS ServiceSubcategory,
    r.provider || ':' || model || ':' || token_type AS SkuId,
    CASE token_type WHEN 'input' THEN 'Input Tokens' WHEN 'cache_read' THEN 'Cache Read Tokens'
        WHEN 'cache_write' THEN 'Cache Write Tokens' WHEN 'output' THEN 'Output Tokens' ELSE 'Unpriced Calls' END
        AS SkuMeter,
    CASE WHEN quantity IS NOT NULL THEN json_object('x_Model', model, 'x_TokenType', token_type)::VARCHAR END
        AS SkuPriceDetails,
    CASE WHEN quantity IS NOT NULL THEN r.provider || ':' || model || ':' || token_type || ':'
        || CAST(list_rate AS VARCHAR) || ':' || CAST(effective_rate AS VARCHAR) || ':usd' END AS SkuPriceId,
    tenant_id AS SubAccountId,
    tenant_id AS SubAccountName,
    CASE WHEN tenant_id IS NOT NULL THEN 'Tenant' END AS SubAccountType,
    CASE WHEN tenant_id IS NOT NULL THEN json_object('tenant', tenant_id)::VARCHAR
         ELSE json_object('tenant', NULL, 'x_unattributed', true)::VARCHAR END AS Tags,
    tenant_id AS x_TenantId,
    r.provider AS x_Provider,
    model AS x_Model,
    token_type AS x_TokenType,
    calls AS x_CallCount,
    pricing_status AS x_PricingStatus,
    price_source AS x_PriceSource,
    unpriced_tokens AS x_UnpricedTokens,
    unattributed_reason AS x_UnattributedReason
FROM rows r LEFT JOIN prov p ON p.key = r.provider
"""

# FOCUS columns first (BillingAccount* are filled from config at export), then the x_ columns.
FOCUS_COLUMNS = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "CommitmentDiscountStatus", "ConsumedQuantity", "ConsumedUnit", "ContractedCost",
    "ContractedUnitPrice", "EffectiveCost", "HostProviderName", "InvoiceId", "InvoiceIssuerName", "ListCost",
    "ListUnitPrice", "PricingCategory", "PricingCurrency", "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost", "PricingCurrencyListUnitPrice", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName", "ServiceProviderName", "ServiceSubcategory",
    "SkuId", "SkuMeter", "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName", "SubAccountType", "Tags",
]
X_COLUMNS = [
    "x_TenantId", "x_Provider", "x_Model", "x_TokenType", "x_CallCount", "x_PricingStatus",
    "x_PriceSource", "x_UnpricedTokens", "x_UnattributedReason",
]
COLUMNS = FOCUS_COLUMNS + X_COLUMNS
_TIME = {"BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd", "ChargePeriodStart"}
# Text a spreadsheet would run as a formula (OWASP CSV injection): a leading =, +, -, @, tab or carriage return, as an
# RE2 class (escapes, not raw characters, so the SQL literal stays printable).
_FORMULA_START_RE = r"^[=+\-@\t\r]"


@dataclass
class ExportSummary:
    rows: int = 0
    billed_cost: Decimal = Decimal(0)
    effective_cost: Decimal = Decimal(0)
    list_cost: Decimal = Decimal(0)
    paths: list[Path] = field(default_factory=list)
    progress: Callable[[int], None] | None = field(default=None, repr=False, compare=False)


def _select(start: dt.date, end: dt.date) -> tuple[str, list[Any]]:
    cols = ", ".join(
        "? AS BillingAccountId" if c == "BillingAccountId" else "? AS BillingAccountName" if c == "BillingAccountName"
        else "NULL::VARCHAR AS InvoiceId" if c == "InvoiceId" else c
        for c in COLUMNS
    )
    sql = (f"SELECT {cols} FROM focus WHERE ChargePeriodStart >= ? AND ChargePeriodStart < ? "
           "ORDER BY ChargePeriodStart, SubAccountId NULLS LAST, x_Provider, x_Model, x_TokenType, SkuPriceId")
    return sql, [start, end]


def export_focus(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    start: dt.date,
    end: dt.date,
    billing_account_id: str,
    billing_account_name: str,
    fmt: Literal["csv", "parquet"] | None = None,
    batch_rows: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write the FOCUS rows whose ChargePeriodStart is in [start, end). Streams; memory is one batch.
    ``progress`` is called with the rows written so far after each batch."""
    fmt = fmt or ("parquet" if path.suffix != ".csv" else "csv")
    sql, params = _select(start, end)
    db = next(iter(con.execute("SELECT current_database()").fetchall()), None)
    cur = con.cursor()
    try:
        if db is not None:  # a new cursor starts in the default database; stay in the caller's (e.g. the lake)
            cur.execute(f'USE "{db[0]}"')
        args = [billing_account_id, billing_account_name, *params]
        if fmt == "csv":
            # Column types from the view's definition: describing the query itself would run its aggregation.
            types = {str(r[0]): str(r[1]) for r in cur.execute("DESCRIBE focus").fetchall()}
            sql = f"SELECT {', '.join(_csv_expr(c, types.get(c, 'VARCHAR')) for c in COLUMNS)} FROM ({sql})"
        cur.execute(sql, args)
        summary = ExportSummary(progress=progress)
        if fmt == "csv":
            _write_csv(cur, path, summary, batch_rows)
        else:
            _write_parquet(cur, path, summary, batch_rows)
        return summary
    finally:
        cur.close()


def _tally(summary: ExportSummary, batch: pa.RecordBatch) -> None:
    summary.rows += batch.num_rows
    if summary.progress is not None:
        summary.progress(summary.rows)
    for col, attr in (("BilledCost", "billed_cost"), ("EffectiveCost", "effective_cost"), ("ListCost", "list_cost")):
        total = sum((Decimal(v) for v in batch.column(col).to_pylist() if v is not None), Decimal(0))
        setattr(summary, attr, getattr(summary, attr) + total)


def _csv_expr(name: str, type_name: str) -> str:
    """One column of the CSV, formatted by DuckDB — UTC 'YYYY-MM-DDTHH:MM:SSZ', decimals always with a point,
    NULL as empty, and OWASP CSV-injection neutralisation (a leading quote) for text a spreadsheet would run as a
    formula — vectorised, so a month of
    FOCUS rows is written in seconds instead of a Python call per cell."""
    c = '"' + name + '"'
    t = type_name.upper()
    if t.startswith("TIMESTAMP"):
        return f"strftime({c}, '%Y-%m-%dT%H:%M:%SZ') AS {c}"
    if t.startswith("DECIMAL") and t.replace(" ", "").endswith(",0)"):
        return f"CAST({c} AS VARCHAR) || '.0' AS {c}"  # FOCUS decimals always carry a point
    if t == "BOOLEAN":
        return f"CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END AS {c}"
    if t == "VARCHAR":
        # A regular expression, not `left(c, 1) IN (...)`: DuckDB plans an IN list as a join with its own hash
        # table, and one per text column took the export to 164 MiB of DuckDB memory for 12 rows (22 MiB this way),
        # over serve's cap (ledger.serve_duckdb_memory_limit_mib).
        quote = "''''"  # SQL for a single quote character
        return f"CASE WHEN regexp_matches({c}, '{_FORMULA_START_RE}') THEN {quote} || {c} ELSE {c} END AS {c}"
    return f"CAST({c} AS VARCHAR) AS {c}"


def _write_csv(cur: duckdb.DuckDBPyConnection, path: Path, summary: ExportSummary, batch_rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    reader = cur.to_arrow_reader(batch_rows)
    with path.open("wb") as f:
        f.write((",".join(COLUMNS) + "\n").encode())
        for batch in reader:
            _tally(summary, batch)
            pacsv.write_csv(batch, f, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    summary.paths.append(path)


def _write_parquet(cur: duckdb.DuckDBPyConnection, root: Path, summary: ExportSummary, batch_rows: int) -> None:
    """Hive partitions root/billing_period=YYYY-MM/part-0.parquet: any engine reads a month as one table
    (DuckDB: read_parquet('root/**/*.parquet', hive_partitioning=true))."""
    root.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for batch in cur.to_arrow_reader(batch_rows):
            _tally(summary, batch)
            table = pa.Table.from_batches([batch])
            periods = [v.strftime("%Y-%m") for v in batch.column("BillingPeriodStart").to_pylist()]
            for period in sorted(set(periods)):
                mask = pa.array([p == period for p in periods])
                part = table.filter(mask)
                if period not in writers:
                    d = root / f"billing_period={period}"
                    d.mkdir(parents=True, exist_ok=True)
                    writers[period] = pq.ParquetWriter(d / "part-0.parquet", part.schema)
                    summary.paths.append(d / "part-0.parquet")
                writers[period].write_table(part)
    finally:
        for wr in writers.values():
            wr.close()


def ledger_totals(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> tuple[Decimal, Decimal]:
    """The ledger's own (effective, list) totals for [start, end), to reconcile an export against."""
    row = con.execute(
        "SELECT coalesce(sum(effective_cost), 0), coalesce(sum(list_cost), 0) FROM calls "
        "WHERE NOT is_duplicate AND start_time >= ? AND start_time < ?",
        [start, end],
    ).fetchall()[0]
    return Decimal(row[0]), Decimal(row[1])


def summary_json(s: ExportSummary) -> str:
    return json.dumps({"rows": s.rows, "billed_cost": str(s.billed_cost), "list_cost": str(s.list_cost)})
