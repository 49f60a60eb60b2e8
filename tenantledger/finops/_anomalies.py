"""Spend anomalies: hours in which a tenant spent far above its own recent baseline (robust modified z-score).

Method (Iglewicz & Hoaglin's modified z-score, per tenant, on hourly effective spend with idle hours as 0):
baseline = median of the previous ``baseline_window_h`` hours; scale = 1.4826 x MAD of those hours (MAD is the
median absolute deviation, so one earlier spike does not inflate the baseline as a mean/stddev would). When
more than half of the window is one value (MAD = 0, typical of a bursty tenant idle most hours) the scale falls
back to the window's mean hourly spend. An hour is an anomaly when z = (spend - baseline) / scale exceeds
``z_threshold`` and the excess over the baseline is at least ``min_excess_usd`` (no alerts about cents).
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from tenantledger.finops._common import Period, QueryFn, Table


class AnomaliesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline_window_h: int = Field(default=168, ge=6)
    """Hours of the tenant's own history the baseline is computed from (default one week)."""
    min_baseline_h: int = Field(default=24, ge=1)
    """Hours of history a tenant needs before any of its hours can be flagged."""
    z_threshold: Decimal = Field(default=Decimal("3.5"), gt=0)
    """Modified z-score above which an hour is flagged (3.5 is Iglewicz & Hoaglin's recommendation)."""
    min_excess_usd: Decimal = Field(default=Decimal("1.00"), ge=0)
    """Minimum spend above the baseline for a flag, so tiny tenants do not page anyone."""


# Hourly spend per tenant with idle hours filled in as 0 (a baseline that skipped idle hours would call every
# busy hour normal). Window frames are RANGE over the hour timestamp, so gaps are measured in real hours.
def anomalies_sql(cfg: AnomaliesConfig, bounded: bool) -> str:
    """The flagged tenant-hours. ``bounded``: parameters (period start, period end, period start) limit the scan."""
    w = int(cfg.baseline_window_h)
    scan = (f"AND start_time >= CAST(? AS TIMESTAMP) - INTERVAL {w} HOUR AND start_time < CAST(? AS TIMESTAMP)"
            if bounded else "")
    since = "AND hour >= CAST(? AS TIMESTAMP)" if bounded else ""
    return f"""
WITH hourly AS (
    SELECT tenant_id, date_trunc('hour', start_time) AS hour, sum(effective_cost) AS cost, count(*) AS calls
    FROM llm_calls WHERE tenant_id IS NOT NULL AND effective_cost IS NOT NULL {scan}
    GROUP BY ALL
), bounds AS (
    SELECT tenant_id, min(hour) AS lo, max(hour) AS hi FROM hourly GROUP BY tenant_id
), grid AS (
    SELECT tenant_id, unnest(generate_series(lo, hi, INTERVAL 1 HOUR)) AS hour FROM bounds
), filled AS (
    SELECT g.tenant_id, g.hour, coalesce(h.cost, 0) AS cost, coalesce(h.calls, 0) AS calls
    FROM grid g LEFT JOIN hourly h ON h.tenant_id = g.tenant_id AND h.hour = g.hour
), scored AS (
    SELECT tenant_id, hour, cost, calls,
           median(cost) OVER w AS baseline, mad(cost) OVER w AS mad, avg(cost) OVER w AS mean, count(*) OVER w AS n
    FROM filled
    WINDOW w AS (PARTITION BY tenant_id ORDER BY hour
                 RANGE BETWEEN INTERVAL {w} HOUR PRECEDING AND INTERVAL 1 HOUR PRECEDING)
), scaled AS (
    SELECT *, CASE WHEN mad > 0 THEN 1.4826 * mad ELSE mean END AS scale FROM scored
)
SELECT tenant_id, hour, cost AS spend_usd, baseline AS baseline_usd, cost - baseline AS excess_usd,
       CASE WHEN scale > 0 THEN round((cost - baseline) / scale, 2) END AS z_score, calls, n AS baseline_hours
FROM scaled
WHERE n >= {int(cfg.min_baseline_h)} AND cost > baseline AND cost - baseline >= {Decimal(cfg.min_excess_usd)}
  AND (scale = 0 OR (cost - baseline) / scale > {Decimal(cfg.z_threshold)}) {since}
"""


def find_anomalies(q: QueryFn, cfg: AnomaliesConfig, period: Period) -> Table:
    """Flagged tenant-hours in ``period``, worst first (new spenders, with no z-score, first of all)."""
    columns, rows = q(anomalies_sql(cfg, bounded=True) + " ORDER BY z_score DESC NULLS FIRST, hour, tenant_id",
                      [period.start_ts, period.end_ts, period.start_ts])
    table = Table("anomalies", columns, [r for r in rows if r[1] < period.end_ts])
    table.notes.append(
        f"method: modified z-score over the previous {cfg.baseline_window_h} h (median/MAD); flagged when "
        f"z > {cfg.z_threshold} and excess >= {cfg.min_excess_usd} USD; an empty z means the tenant had no spend "
        "before (a new spender)"
    )
    return table
