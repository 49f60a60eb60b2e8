"""Per-tenant budgets (daily and monthly, USD): status for the CLI and the gateway budget-check API, and the
monitor that fires each threshold crossing exactly once per tenant, threshold and period (log, metric, webhook).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tenantledger.finops._common import QueryFn, Table

log = logging.getLogger("tenantledger.budgets")

State = Literal["ok", "warn", "over"]
PERIODS = ("daily", "monthly")
_ORDER: dict[str, int] = {"ok": 0, "warn": 1, "over": 2}
ACTIONS: dict[str, str] = {
    "ok": "allow",
    "warn": "allow, and tell the tenant's owner: the soft budget threshold is reached",
    "over": "deny or downgrade to a cheaper model: the hard budget is spent for this period",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetLimit(_Strict):
    daily_usd: Decimal | None = Field(default=None, gt=0)
    """Budget for one UTC day; None = no daily budget."""
    monthly_usd: Decimal | None = Field(default=None, gt=0)
    """Budget for one UTC calendar month; None = no monthly budget."""

    def limit(self, period: str) -> Decimal | None:
        return self.daily_usd if period == "daily" else self.monthly_usd


class WebhookConfig(_Strict):
    url: str | None = None
    """POST each alert as JSON to this URL; None = no webhook."""
    timeout_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    """Deliveries are retried with exponential backoff until this many attempts; pending ones survive restarts."""
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=300.0, gt=0)


class BudgetsConfig(_Strict):
    default: BudgetLimit = BudgetLimit()
    """Budget of every tenant without its own entry."""
    tenants: dict[str, BudgetLimit] = {}
    """Per-tenant overrides (replace the default for that tenant)."""
    soft_threshold_pct: Decimal = Field(default=Decimal(80), gt=0, le=100)
    hard_threshold_pct: Decimal = Field(default=Decimal(100), gt=0)
    check_interval_s: float = Field(default=5.0, gt=0)
    """How often the server compares spend with budgets (alert latency = this + the settle wait)."""
    webhook: WebhookConfig = WebhookConfig()

    @model_validator(mode="after")
    def _order(self) -> BudgetsConfig:
        if self.soft_threshold_pct >= self.hard_threshold_pct:
            raise ValueError("soft_threshold_pct must be below hard_threshold_pct")
        return self

    def for_tenant(self, tenant: str) -> BudgetLimit:
        return self.tenants.get(tenant, self.default)

    @property
    def enabled(self) -> bool:
        return any(b.daily_usd or b.monthly_usd for b in (self.default, *self.tenants.values()))


@dataclass(frozen=True)
class BudgetState:
    tenant_id: str
    period: str
    period_start: dt.date
    spend_usd: Decimal
    limit_usd: Decimal
    used_pct: Decimal
    state: str


def _state(cfg: BudgetsConfig, spend: Decimal, limit: Decimal) -> tuple[Decimal, str]:
    used = (spend * 100 / limit).quantize(Decimal("0.01"))
    if used >= cfg.hard_threshold_pct:
        return used, "over"
    if used >= cfg.soft_threshold_pct:
        return used, "warn"
    return used, "ok"


_SPEND_SQL = """
SELECT tenant_id,
       coalesce(sum(effective_cost) FILTER (WHERE start_time >= ?), 0) AS day_spend,
       coalesce(sum(effective_cost), 0) AS month_spend
FROM llm_calls
WHERE tenant_id IS NOT NULL AND start_time >= ? AND start_time < ? {tenant_filter}
GROUP BY tenant_id
"""


def spend_now(q: QueryFn, now: dt.datetime, tenant: str | None = None) -> dict[str, tuple[Decimal, Decimal]]:
    """Spend (today, this month) per tenant, UTC periods, from settled calls up to ``now``."""
    day_start = dt.datetime.combine(now.date(), dt.time())
    month_start = day_start.replace(day=1)
    params: list[Any] = [day_start, month_start, now + dt.timedelta(seconds=1)]
    flt = ""
    if tenant is not None:
        flt, params = "AND tenant_id = ?", [*params, tenant]
    _, rows = q(_SPEND_SQL.format(tenant_filter=flt), params)
    return {r[0]: (Decimal(r[1]), Decimal(r[2])) for r in rows}


def spend_from_daily(
    daily: Mapping[tuple[str, dt.date], Decimal], now: dt.datetime
) -> dict[str, tuple[Decimal, Decimal]]:
    """What ``spend_now`` answers, from spend per (tenant, UTC day) (``ledger.Ledger.daily_spend``): today's and
    this month's up to today. Unlike the SQL it counts a call stamped later today than ``now`` (a client clock ahead
    of the server's) today, not never."""
    today = now.date()
    month_start = today.replace(day=1)
    out: dict[str, tuple[Decimal, Decimal]] = {}
    for (tenant, day), cost in daily.items():
        if month_start <= day <= today:
            d, m = out.get(tenant, (Decimal(0), Decimal(0)))
            out[tenant] = (d + cost if day == today else d, m + cost)
    return out


def evaluate(
    cfg: BudgetsConfig, spend: dict[str, tuple[Decimal, Decimal]], now: dt.datetime, tenants: set[str] | None = None
) -> list[BudgetState]:
    out: list[BudgetState] = []
    names = set(spend) | set(cfg.tenants) if tenants is None else tenants
    for tenant in sorted(names):
        day, month = spend.get(tenant, (Decimal(0), Decimal(0)))
        budget = cfg.for_tenant(tenant)
        for period, value, start in (("daily", day, now.date()), ("monthly", month, now.date().replace(day=1))):
            limit = budget.limit(period)
            if limit is None:
                continue
            used, state = _state(cfg, value, limit)
            out.append(BudgetState(tenant, period, start, value, limit, used, state))
    return out


def budget_status(q: QueryFn, cfg: BudgetsConfig, now: dt.datetime, tenant: str | None = None) -> Table:
    """Every budgeted tenant's spend against its daily and monthly budgets (or one tenant's)."""
    spend = spend_now(q, now, tenant)
    states = evaluate(cfg, spend, now, {tenant} if tenant is not None else None)
    table = Table(
        "budgets",
        ["tenant_id", "period", "period_start", "spend_usd", "limit_usd", "used_pct", "state", "action"],
        [(s.tenant_id, s.period, s.period_start, s.spend_usd, s.limit_usd, s.used_pct, s.state, ACTIONS[s.state])
         for s in sorted(states, key=lambda s: (-_ORDER[s.state], -s.used_pct, s.tenant_id, s.period))],
    )
    if not cfg.enabled:
        table.notes.append("no budget is configured: set budgets.default or budgets.tenants in the config file")
    return table


def budget_check(q: QueryFn, cfg: BudgetsConfig, tenant: str, now: dt.datetime,
                 spend: dict[str, tuple[Decimal, Decimal]] | None = None) -> dict[str, Any]:
    """The gateway's pre-call question, answered from settled spend (see README: latency and staleness): ``spend``
    (spend_now's answer for ``tenant``, from the ledger's daily totals in serve), else summed in SQL."""
    if spend is None:
        spend = spend_now(q, now, tenant)
    states = evaluate(cfg, spend, now, {tenant})
    worst = max((s.state for s in states), key=lambda s: _ORDER[s], default="ok")
    return {
        "tenant_id": tenant,
        "as_of": now.replace(microsecond=0).isoformat() + "Z",
        "known": tenant in spend,
        "state": worst,
        "action": ACTIONS[worst],
        "periods": [
            {"period": s.period, "period_start": s.period_start.isoformat(), "spend_usd": str(s.spend_usd),
             "limit_usd": str(s.limit_usd), "remaining_usd": str(max(s.limit_usd - s.spend_usd, Decimal(0))),
             "used_pct": str(s.used_pct), "state": s.state}
            for s in states
        ],
        "budgeted": bool(states),
    }


ALERTS_DDL = """
CREATE TABLE IF NOT EXISTS budget_alerts (
    tenant_id VARCHAR NOT NULL,
    period VARCHAR NOT NULL,
    period_start DATE NOT NULL,
    threshold VARCHAR NOT NULL,
    threshold_pct DECIMAL(9,2) NOT NULL,
    spend_usd DECIMAL(38,12) NOT NULL,
    limit_usd DECIMAL(38,12) NOT NULL,
    fired_at TIMESTAMP NOT NULL,
    delivered_at TIMESTAMP,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP,
    last_error VARCHAR,
    PRIMARY KEY (tenant_id, period, period_start, threshold)
)
"""


def alert_payload(row: tuple[Any, ...]) -> dict[str, Any]:
    tenant, period, start, threshold, pct, spend, limit, fired = row[:8]
    return {
        "type": "tenantledger.budget_alert", "tenant_id": tenant, "period": period,
        "period_start": start.isoformat(), "threshold": threshold, "threshold_pct": str(pct),
        "spend_usd": str(spend), "limit_usd": str(limit), "fired_at": fired.isoformat() + "Z",
    }


class BudgetMonitor:
    """Compares spend with budgets every ``check_interval_s`` and fires each crossing once.

    Threading: ``start`` runs one checker thread (which also delivers webhooks, so deliveries are serialised);
    ``stop`` joins it. ``con`` is a cursor of the serving connection reserved for this monitor. Fired alerts and
    pending webhook deliveries are rows of ``budget_alerts`` in the ledger, so they survive a restart.
    """

    def __init__(self, cfg: BudgetsConfig, con: duckdb.DuckDBPyConnection,
                 guard: Callable[[], AbstractContextManager[object]] = nullcontext,
                 daily: Callable[[dt.date], Mapping[tuple[str, dt.date], Decimal]] | None = None) -> None:
        """``guard``: held around each use of ``con`` (the serving ledger's ``LedgerFile.use``). ``daily``: spend
        per (tenant, UTC day) from a day on, kept as the ledger is written (``ledger.Ledger.daily_spend``); without
        it each check sums this month's calls in SQL, a scan that grows with the month (~0.3-0.4 s of CPU every
        ``check_interval_s`` at 8.5 M calls, bench/README.md 2026-12-02)."""
        self.cfg = cfg
        self._con = con
        self._guard = guard
        self._daily = daily
        self._con.execute(ALERTS_DDL)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.states: list[BudgetState] = []
        self.webhook_failures = 0

    def _query(self, sql: str, params: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = self._con.execute(sql, list(params))
        return [d[0] for d in cur.description or ()], cur.fetchall()

    def start(self) -> None:
        if not self.cfg.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="budget-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check(dt.datetime.now(dt.UTC).replace(tzinfo=None))
                self.deliver(dt.datetime.now(dt.UTC).replace(tzinfo=None))
            except duckdb.Error:
                log.exception("budget check failed; retrying at the next interval")
            self._stop.wait(self.cfg.check_interval_s)

    def check(self, now: dt.datetime) -> list[dict[str, Any]]:
        """One pass: evaluate every tenant, record and announce the crossings not fired before."""
        with self._guard(), self._lock:
            if self._daily is not None:
                spend = spend_from_daily(self._daily(now.date().replace(day=1)), now)
            else:
                spend = spend_now(self._query, now)
            states = evaluate(self.cfg, spend, now)
            self.states = states
            fired: list[dict[str, Any]] = []
            for s in states:
                for threshold, pct in (("soft", self.cfg.soft_threshold_pct), ("hard", self.cfg.hard_threshold_pct)):
                    if s.used_pct < pct:
                        continue
                    # The primary key makes "exactly once per tenant, threshold and period" hold across restarts.
                    rows = self._con.execute(
                        "INSERT INTO budget_alerts (tenant_id, period, period_start, threshold, threshold_pct, "
                        "spend_usd, limit_usd, fired_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING RETURNING tenant_id, period, period_start, threshold, threshold_pct, "
                        "spend_usd, limit_usd, fired_at",
                        [s.tenant_id, s.period, s.period_start, threshold, pct, s.spend_usd, s.limit_usd, now,
                         now if self.cfg.webhook.url else None],
                    ).fetchall()
                    for row in rows:
                        payload = alert_payload(row)
                        fired.append(payload)
                        # %r: tenant ids are untrusted; repr escapes newlines and control characters (log injection).
                        log.warning(
                            "budget alert: tenant=%r %s budget %s threshold (%s%%) crossed: spend %s of %s USD",
                            s.tenant_id, s.period, threshold, pct, s.spend_usd, s.limit_usd,
                        )
            return fired

    def deliver(self, now: dt.datetime) -> int:
        """POST due webhook deliveries; failures are retried with exponential backoff. Returns deliveries made."""
        wh = self.cfg.webhook
        if wh.url is None:
            return 0
        with self._guard():
            return self._deliver(now, wh, wh.url)

    def _deliver(self, now: dt.datetime, wh: WebhookConfig, url: str) -> int:
        due = self._con.execute(
            "SELECT tenant_id, period, period_start, threshold, threshold_pct, spend_usd, limit_usd, fired_at, "
            "attempts FROM budget_alerts WHERE delivered_at IS NULL AND attempts < ? AND next_attempt_at <= ? "
            "ORDER BY fired_at",
            [wh.max_attempts, now],
        ).fetchall()
        done = 0
        for row in due:
            key = list(row[:4])
            attempts = int(row[8]) + 1
            try:
                req = urllib.request.Request(
                    url, data=json.dumps(alert_payload(row)).encode(),
                    headers={"Content-Type": "application/json", "User-Agent": "tenantledger"},
                )
                with urllib.request.urlopen(req, timeout=wh.timeout_s) as resp:
                    resp.read()
            except (urllib.error.URLError, OSError, ValueError) as e:
                self.webhook_failures += 1
                delay = min(wh.initial_backoff_s * 2 ** (attempts - 1), wh.max_backoff_s)
                self._con.execute(
                    "UPDATE budget_alerts SET attempts = ?, last_error = ?, next_attempt_at = ? "
                    "WHERE tenant_id = ? AND period = ? AND period_start = ? AND threshold = ?",
                    [attempts, str(e)[:500], now + dt.timedelta(seconds=delay), *key],
                )
                log.warning("budget webhook delivery failed (attempt %d of %d): %s", attempts, wh.max_attempts, e)
                continue
            self._con.execute(
                "UPDATE budget_alerts SET attempts = ?, delivered_at = ?, last_error = NULL "
                "WHERE tenant_id = ? AND period = ? AND period_start = ? AND threshold = ?",
                [attempts, now, *key],
            )
            done += 1
        return done
