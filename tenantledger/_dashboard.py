"""The web dashboard: server-rendered HTML with inline SVG charts (no script or style from a CDN: it works
offline), read through the same query function as the CLI, so a tenant-scoped token sees only its tenant.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from html import escape
from typing import Any
from urllib.parse import quote

from tenantledger.finops import BudgetsConfig, Period, QueryFn, audit, budget_status

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
TOP_N = 8


def usd(v: Any) -> str:
    """Human money: cents for a dollar and more, six decimals below (LLM calls cost fractions of a cent)."""
    if v is None:
        return "—"
    d = Decimal(v)
    return f"${d:,.2f}" if abs(d) >= 1 else f"${d:.6f}"


def _td(v: Any, cls: str = "", **data: Any) -> str:
    attrs = "".join(f' data-{k.replace("_", "-")}="{escape(str(x))}"' for k, x in data.items())
    return f'<td class="{cls}"{attrs}>{escape("" if v is None else str(v))}</td>'


def _money_td(v: Any, **data: Any) -> str:
    return _td(usd(v), "num", usd="" if v is None else str(Decimal(v)), **data)


def _table(title: str, head: list[str], rows: list[str], testid: str, empty: str = "nothing yet",
           wide: bool = False) -> str:
    body = "".join(rows) or f'<tr><td colspan="{len(head)}" class="empty">{escape(empty)}</td></tr>'
    return (f'<section class="{"wide" if wide else ""}"><h2>{escape(title)}</h2>'
            f'<table data-testid="{testid}"><thead><tr>'
            + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody></table></section>")


def _trend_svg(days: list[dt.date], series: dict[str, dict[dt.date, Decimal]]) -> str:
    w, h, pad = 900, 240, 40
    if not days:
        return '<p class="empty">no spend yet</p>'
    totals = {d: sum((s.get(d, Decimal(0)) for s in series.values()), Decimal(0)) for d in days}
    top = max(totals.values()) or Decimal(1)
    bw = (w - pad) / len(days)
    parts = [f'<svg viewBox="0 0 {w} {h + 30}" role="img" aria-label="daily spend by tenant" data-testid="trend">']
    for i, d in enumerate(days):
        y = float(h)
        for j, (name, s) in enumerate(series.items()):
            v = s.get(d, Decimal(0))
            if not v:
                continue
            bh = float(v / top) * (h - 10)
            y -= bh
            parts.append(f'<rect x="{pad + i * bw + 1:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" '
                         f'height="{bh:.1f}" fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(name)} '
                         f'{d.isoformat()}: {usd(v)}</title></rect>')
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{pad + i * bw + bw / 2:.1f}" y="{h + 16}" text-anchor="middle" '
                         f'font-size="11">{d.strftime("%m-%d")}</text>')
    parts.append(f'<text x="0" y="12" font-size="11">{usd(top)}</text></svg>')
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[j % len(PALETTE)]}"></i>{escape(n)}</span>'
                     for j, n in enumerate(series))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0}header small{color:#cbd5e1}
main{padding:16px 24px;display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002;overflow:auto}
section.wide{grid-column:1/-1}h2{font-size:15px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.empty{color:#888}
.kpis{display:flex;gap:32px;flex-wrap:wrap}.kpi b{display:block;font-size:22px}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:12px}.key i{display:inline-block;width:10px;height:10px;
margin-right:4px}.state-warn{color:#b45309;font-weight:600}.state-over{color:#b91c1c;font-weight:700}
a{color:#1d4ed8}
"""

# Live update without a page flash: fetch the same page and swap <main>; plain fetch, no library.
SCRIPT = """
setInterval(async () => {
  try {
    const r = await fetch(location.href, {credentials: 'same-origin'});
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    document.querySelector('main').replaceWith(doc.querySelector('main'));
    document.getElementById('updated').textContent = doc.getElementById('updated').textContent;
  } catch (e) {}
}, REFRESH_MS);
"""


def _page(title: str, body: str, now: dt.datetime, refresh_s: int, scope: str | None) -> str:
    who = f"tenant {escape(scope)}" if scope else "all tenants"
    script = SCRIPT.replace("REFRESH_MS", str(refresh_s * 1000)) if refresh_s > 0 else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
            f'<header><h1><a href="/ui" style="color:#fff;text-decoration:none">tenantledger</a></h1>'
            f'<small>{who}</small><small id="updated">updated {now.strftime("%Y-%m-%d %H:%M:%S")} UTC</small>'
            f'</header>{body}<script>{script}</script></body></html>')


def render_dashboard(q: QueryFn, budgets: BudgetsConfig, now: dt.datetime, days: int = 30,
                     refresh_s: int = 5, scope: str | None = None) -> str:
    end = now.date() + dt.timedelta(days=1)
    period = Period(end - dt.timedelta(days=days), end)
    p = [period.start_ts, period.end_ts]
    where = "start_time >= ? AND start_time < ?"
    _, k = q(f"""SELECT coalesce(sum(effective_cost), 0), coalesce(sum(effective_cost) FILTER (WHERE tenant_id IS NOT
        NULL), 0), count(*), count(DISTINCT tenant_id), count(DISTINCT request_id), count(*) FILTER (WHERE
        effective_cost IS NULL) FROM llm_calls WHERE {where}""", p)
    total, attributed, calls, tenants, requests, unpriced = k[0]
    total, attributed = Decimal(total), Decimal(attributed)
    # Never round 99.97 % up to "100 %": a dashboard must not claim full attribution when a cent is missing.
    pct = (attributed * 100 / total).quantize(Decimal("0.01"), rounding="ROUND_DOWN") if total else None
    coverage = "—" if pct is None else f"{pct} %"
    kpis = (f'<section class="wide"><div class="kpis" data-testid="kpis">'
            f'<div class="kpi">Spend, last {days} days'
            f'<b data-testid="kpi-total" data-usd="{total}">{usd(total)}</b></div>'
            f'<div class="kpi">Attributed<b data-testid="kpi-coverage">{coverage}</b></div>'
            f'<div class="kpi">Unattributed<b data-testid="kpi-unattributed" data-usd="{total - attributed}">'
            f'{usd(total - attributed)}</b></div>'
            f'<div class="kpi">LLM calls<b data-testid="kpi-calls">{calls}</b></div>'
            f'<div class="kpi">Requests<b>{requests}</b></div><div class="kpi">Tenants<b>{tenants}</b></div>'
            f'<div class="kpi">Unpriced calls<b data-testid="kpi-unpriced">{unpriced}</b></div></div></section>')

    _, trend_rows = q(f"""WITH t AS (SELECT tenant_id, sum(effective_cost) c FROM llm_calls WHERE {where}
          AND tenant_id IS NOT NULL GROUP BY 1 ORDER BY c DESC NULLS LAST, tenant_id LIMIT {TOP_N})
        SELECT CAST(date_trunc('day', start_time) AS DATE) AS day,
               CASE WHEN tenant_id IS NULL THEN '(unattributed)' WHEN tenant_id IN (SELECT tenant_id FROM t)
                    THEN tenant_id ELSE 'other' END AS who, coalesce(sum(effective_cost), 0)
        FROM llm_calls WHERE {where} GROUP BY ALL ORDER BY day""", [*p, *p])
    series: dict[str, dict[dt.date, Decimal]] = {}
    for day, who, c in trend_rows:
        series.setdefault(who, {})[day] = Decimal(c)
    order = sorted(series, key=lambda n: (n in ("other", "(unattributed)"), -sum(series[n].values()), n))
    ndays = sorted({d for s in series.values() for d in s})
    all_days = [ndays[0] + dt.timedelta(days=i) for i in range((ndays[-1] - ndays[0]).days + 1)] if ndays else []
    trend = (f'<section class="wide"><h2>Daily spend by tenant (top {TOP_N} + other)</h2>'
             f'{_trend_svg(all_days, {n: series[n] for n in order})}</section>')

    _, tt = q(f"""SELECT tenant_id, sum(effective_cost), count(*), count(DISTINCT request_id), max(end_time)
        FROM llm_calls WHERE {where} AND tenant_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1 LIMIT 20""", p)
    budget_state: dict[str, str] = {}
    if budgets.enabled:
        bt = budget_status(q, budgets, now)
        for r in bt.rows:
            if r[6] != "ok" or r[0] not in budget_state:
                budget_state[r[0]] = r[6] if budget_state.get(r[0]) != "over" else "over"
    top_tenants = _table("Top tenants", ["tenant", "spend", "calls", "requests", "cost / call", "last activity",
                                         "budget"], [
        "<tr>" + _td(t, tenant=t) + _money_td(c, testid="tenant-spend", tenant=t) + _td(n, "num")
        + _td(r, "num") + _money_td(Decimal(c) / n if c is not None and n else None)
        + _td(last.strftime("%Y-%m-%d %H:%M") if last else "")
        + _td(budget_state.get(t, "—"), f"state-{budget_state.get(t, 'none')}") + "</tr>"
        for t, c, n, r, last in tt], "top-tenants")

    _, tu = q(f"""SELECT user_id, min(tenant_id), sum(effective_cost), count(*), max(end_time) FROM llm_calls
        WHERE {where} AND user_id IS NOT NULL GROUP BY 1 ORDER BY 3 DESC NULLS LAST, 1 LIMIT 20""", p)
    top_users = _table("Top users", ["user", "tenant", "spend", "calls", "cost / call", "last activity"], [
        "<tr>" + _td(u) + _td(t) + _money_td(c, testid="user-spend", user=u) + _td(n, "num")
        + _money_td(Decimal(c) / n if c is not None and n else None)
        + _td(last.strftime("%Y-%m-%d %H:%M") if last else "") + "</tr>" for u, t, c, n, last in tu], "top-users")

    _, bm = q(f"""SELECT coalesce(provider, 'unknown'), coalesce(response_model, request_model, 'unknown'), count(*),
        sum(input_tokens), sum(output_tokens), sum(effective_cost) FROM llm_calls WHERE {where}
        GROUP BY 1, 2 ORDER BY 6 DESC NULLS LAST, 1, 2 LIMIT 20""", p)
    by_model = _table("Spend by model", ["provider", "model", "calls", "input tokens", "output tokens", "spend"], [
        "<tr>" + _td(pr) + _td(m) + _td(n, "num") + _td(i, "num") + _td(o, "num")
        + _money_td(c, testid="model-spend", model=m) + "</tr>" for pr, m, n, i, o, c in bm], "by-model")
    _, bf = q(f"""SELECT coalesce(feature, '(untagged)'), count(*), sum(effective_cost) FROM llm_calls WHERE {where}
        GROUP BY 1 ORDER BY 3 DESC NULLS LAST, 1 LIMIT 20""", p)
    by_feature = _table("Spend by feature", ["feature", "calls", "spend"], [
        "<tr>" + _td(f) + _td(n, "num") + _money_td(c, testid="feature-spend", feature=f) + "</tr>"
        for f, n, c in bf], "by-feature")

    _, rr = q("""SELECT request_id, tenant_id, user_id, calls, input_tokens + output_tokens, effective_cost, last_time
        FROM requests WHERE first_time >= ? AND first_time < ? ORDER BY last_time DESC, request_id LIMIT 25""", p)
    recent = _table("Recent requests", ["request", "tenant", "user", "calls", "tokens", "cost", "last call"], [
        f'<tr><td><a href="/ui/request/{quote(rid, safe="")}">{escape(rid[:16])}…</a></td>' + _td(t or "—") + _td(u)
        + _td(n, "num") + _td(tok, "num") + _money_td(c, testid="request-cost", request=rid)
        + _td(last.strftime("%Y-%m-%d %H:%M:%S") if last else "") + "</tr>"
        for rid, t, u, n, tok, c, last in rr], "recent-requests")

    sections = audit(q, period)
    reasons = sections[1]
    unattributed = _table("Unattributed spend by reason", ["reason", "calls", "spend", "services", "what to fix"], [
        "<tr>" + _td(r) + _td(n, "num") + _money_td(c, testid="reason-spend", reason=r) + _td(s) + _td(fix)
        + "</tr>" for r, n, c, _u, s, fix in reasons.rows], "unattributed", "every dollar is attributed")
    budget_html = ""
    if budgets.enabled:
        bt = budget_status(q, budgets, now)
        budget_html = _table("Budgets", ["tenant", "period", "spend", "limit", "used", "state"], [
            "<tr>" + _td(t) + _td(per) + _money_td(s) + _money_td(lim) + _td(f"{used} %", "num")
            + _td(st, f"state-{st}", testid="budget-state", tenant=t, period=per) + "</tr>"
            for t, per, _ps, s, lim, used, st, _a in bt.rows[:30]], "budgets")
    body = ("<main>" + kpis + trend + top_tenants + top_users + by_model + by_feature + recent + unattributed
            + budget_html + "</main>")
    return _page("tenantledger", body, now, refresh_s, scope)


def render_request(q: QueryFn, request_id: str, now: dt.datetime, scope: str | None = None) -> str | None:
    _, rows = q("""SELECT trace_id, span_id, service_name, span_name, coalesce(response_model, request_model),
        tenant_id, tenant_source, unattributed_reason, input_tokens, cache_read_tokens, output_tokens, effective_cost,
        pricing_status, start_time FROM llm_calls WHERE request_id = ? ORDER BY start_time, span_id""", [request_id])
    if not rows:
        return None
    total = sum((Decimal(r[11]) for r in rows if r[11] is not None), Decimal(0))
    table = _table(f"Request {request_id}", ["trace", "span", "service", "span name", "model", "tenant",
                                             "tenant found via", "unattributed because", "input", "cache read",
                                             "output", "cost", "pricing", "start"], [
        "<tr>" + _td(t[:8] + "…") + _td(s) + _td(svc) + _td(name) + _td(m) + _td(ten or "—")
        + _td(src, testid="tenant-source") + _td(reason) + _td(i, "num") + _td(cr, "num") + _td(o, "num")
        + _money_td(c, testid="call-cost") + _td(ps) + _td(st.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]) + "</tr>"
        for t, s, svc, name, m, ten, src, reason, i, cr, o, c, ps, st in rows], "request-calls", wide=True)
    body = (f'<main><section class="wide"><p><a href="/ui">← dashboard</a></p><div class="kpis">'
            f'<div class="kpi">Calls<b>{len(rows)}</b></div><div class="kpi">Cost<b data-testid="request-total" '
            f'data-usd="{total}">{usd(total)}</b></div></div></section>{table}</main>')
    return _page(f"request {request_id}", body, now, 0, scope)
