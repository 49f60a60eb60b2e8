"""The FinOps subcommands — budget, anomalies, concentration, audit, reconcile, statement — over the ledger,
through a running server or on a stopped ledger file, printed as a table, CSV or JSON.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from tenantledger.finops import (
    FinopsError,
    Period,
    QueryFn,
    Table,
    audit,
    budget_status,
    concentration,
    find_anomalies,
    load_provider_export,
    reconcile,
    statement,
)
from tenantledger.finops._common import require_tenant

PERIOD_HELP = "--from/--to are UTC days, --to exclusive; default: the last 30 days up to and including today"


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date: use YYYY-MM-DD") from e


def _pcts(value: str) -> list[Decimal]:
    try:
        return [Decimal(v) for v in value.split(",") if v.strip()]
    except ArithmeticError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of percentages") from e


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def period_of(args: argparse.Namespace, default_days: int = 30) -> Period:
    end = args.end or (_today() + dt.timedelta(days=1))
    start = args.start or (end - dt.timedelta(days=default_days))
    return Period(start, end)


def query_fn(args: argparse.Namespace) -> QueryFn:
    from tenantledger.cli import _config, _query

    config = _config(args)

    def q(sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        r = _query(config.ledger.path, sql, getattr(args, "token", None), params, revive=True)
        if r.truncated:
            raise FinopsError("the result was too large to fetch in one query", "narrow --from/--to")
        return r.columns, r.rows

    return q


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return str(v)


def print_tables(tables: Sequence[Table], fmt: str, out: Any = None) -> None:
    """Human tables by default; CSV (sections separated by a `# title` line) or one JSON object for scripts."""
    out = out or sys.stdout
    if fmt == "json":
        doc = {t.title: {"rows": [{k: _cell(v) if not isinstance(v, int | bool) else v for k, v in r.items()}
                                  for r in t.records()], "notes": t.notes} for t in tables}
        out.write(json.dumps(doc if len(tables) > 1 else next(iter(doc.values())), indent=1) + "\n")
        return
    for i, t in enumerate(tables):
        if fmt == "csv":
            if len(tables) > 1:
                out.write(("\n" if i else "") + f"# {t.title}\n")
            w = csv.writer(out, lineterminator="\n")
            w.writerow(t.columns)
            w.writerows([_cell(v) for v in r] for r in t.rows)
            continue
        cells = [[_cell(v) or ("NULL" if v is None else "") for v in r] for r in t.rows]
        widths = [min(60, max([len(c)] + [len(row[j]) for row in cells])) for j, c in enumerate(t.columns)]
        out.write(("\n" if i else "") + f"== {t.title} ==\n")
        out.write("  ".join(c.ljust(w) for c, w in zip(t.columns, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if not t.rows:
            out.write("(none)\n")
        for note in t.notes:
            out.write(f"note: {note}\n")


def cmd_budget(args: argparse.Namespace) -> int:
    from tenantledger.cli import _config

    cfg = _config(args).budgets
    q = query_fn(args)
    if args.tenant is not None:
        require_tenant(q, args.tenant)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    print_tables([budget_status(q, cfg, now, args.tenant)], args.format)
    return 0


def cmd_anomalies(args: argparse.Namespace) -> int:
    from tenantledger.cli import _config

    cfg = _config(args).anomalies
    print_tables([find_anomalies(query_fn(args), cfg, period_of(args, 7))], args.format)
    return 0


def cmd_concentration(args: argparse.Namespace) -> int:
    print_tables([concentration(query_fn(args), period_of(args), args.top_pct, args.grain)], args.format)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    print_tables(audit(query_fn(args), period_of(args)), args.format)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    costs = load_provider_export(Path(args.file), args.provider)
    tables = reconcile(query_fn(args), costs, args.provider, period_of(args), args.tolerance_usd,
                       args.tolerance_pct, args.allocate)
    print_tables(tables, args.format)
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    from tenantledger.cli import _config

    cfg = _config(args).statements
    table, stripe = statement(query_fn(args), cfg, args.tenant, period_of(args), args.markup_pct)
    if args.format == "stripe":
        sys.stdout.write(json.dumps(stripe, indent=1) + "\n")
    else:
        print_tables([table], args.format)
    return 0


EPILOGS = {
    "budget": """examples:
  tenantledger budget --config tenantledger.yaml
  tenantledger budget --tenant acme --format json
Budgets come from the config file (budgets.default, budgets.tenants). States: ok, warn (soft threshold reached),
over (hard threshold reached). A gateway asks the running server instead: GET /v1/budget/{tenant}.""",
    "anomalies": """examples:
  tenantledger anomalies
  tenantledger anomalies --from 2026-11-01 --to 2026-12-01 --format csv
Flags tenant-hours far above the tenant's own baseline (median/MAD modified z-score; see README).
Default period: the last 7 days.""",
    "concentration": """examples:
  tenantledger concentration --from 2026-01-01 --to 2026-07-01
  tenantledger concentration --top-pct 5,10 --grain all --format json""",
    "audit": """examples:
  tenantledger audit
  tenantledger audit --from 2026-11-01 --to 2026-12-01 --format json
Shows the share of dollars attributed to a tenant and, for the rest, why, where, and what to fix.""",
    "reconcile": """examples:
  tenantledger reconcile --provider openai --file openai_costs.csv --from 2026-11-01 --to 2026-12-01
  tenantledger reconcile --provider anthropic --file cost_report.csv --allocate --format csv
Provider formats: openai (Costs API flattened: start_time, line_item, amount_value, amount_currency);
anthropic (cost report: starting_at, model, amount in cents, currency).""",
    "statement": """examples:
  tenantledger statement --tenant acme --from 2026-11-01 --to 2026-12-01
  tenantledger statement --tenant acme --markup-pct 20 --format stripe > acme-invoice-items.json
--format stripe prints Stripe invoice items (amounts in cents); nothing is sent to Stripe.""",
}


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    def parser(name: str, help_: str, func: Callable[[argparse.Namespace], int], period: bool = True,
               formats: tuple[str, ...] = ("table", "csv", "json")) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, epilog=EPILOGS[name],
                                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        common(p)
        if period:
            p.add_argument("--from", dest="start", type=_date, metavar="DATE", help="first day, inclusive (UTC)")
            p.add_argument("--to", dest="end", type=_date, metavar="DATE", help="last day, exclusive (UTC)")
        p.add_argument("--format", choices=formats, default="table", help="output format (default table)")
        p.add_argument("--token", metavar="TOKEN", help="bearer token of the query API, when the server requires one")
        p.set_defaults(func=func)
        return p

    b = parser("budget", "per-tenant spend against daily and monthly budgets", cmd_budget, period=False)
    b.add_argument("--tenant", metavar="TENANT", help="only this tenant")
    parser("anomalies", "tenant-hours whose spend is far above the tenant's own baseline", cmd_anomalies)
    c = parser("concentration", "share of spend driven by the top N %% of tenants, per period", cmd_concentration)
    c.add_argument("--top-pct", type=_pcts, default=[Decimal(1), Decimal(5), Decimal(10), Decimal(20)],
                   metavar="LIST", help="percentages of tenants to report (default 1,5,10,20)")
    c.add_argument("--grain", choices=("day", "month", "all"), default="month", help="period grain (default month)")
    parser("audit", "attribution audit: coverage, unattributed dollars by reason, what to fix", cmd_audit)
    r = parser("reconcile", "compare the ledger with a provider's cost export per day and model", cmd_reconcile)
    r.add_argument("--provider", required=True, choices=("openai", "anthropic"), help="format of the export file")
    r.add_argument("--file", required=True, metavar="CSV", help="the provider's cost export")
    r.add_argument("--tolerance-usd", type=Decimal, default=Decimal("0.01"), metavar="USD",
                   help="a day x model matches within max(this, --tolerance-pct) (default 0.01)")
    r.add_argument("--tolerance-pct", type=Decimal, default=Decimal(1), metavar="PCT", help="(default 1)")
    r.add_argument("--allocate", action="store_true",
                   help="allocate the unattributed remainder to tenants pro rata (FOCUS 1.3 Allocated* columns)")
    s = parser("statement", "a tenant's chargeback statement (line items; CSV or Stripe invoice items)",
               cmd_statement, formats=("table", "csv", "json", "stripe"))
    s.add_argument("--tenant", required=True, metavar="TENANT", help="the tenant to bill")
    s.add_argument("--markup-pct", type=Decimal, metavar="PCT", help="cost-plus markup (default statements.markup_pct)")
