"""`tenantledger export focus`: FOCUS CSV or Parquet for finance, from a stopped ledger or through a running server.

Through a server, the server writes the export into a private temporary directory and streams it back as a
tar archive, which the CLI unpacks at the destination (the server's DuckDB has no file access; see security).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPILOG = """examples:
  tenantledger export focus --from 2026-01-01 --to 2026-02-01 -o january.csv
  tenantledger export focus --from 2026-01-01 --to 2026-02-01 -o focus/ --format parquet
The period is [--from, --to) in UTC by charge period. CSV is formula-injection safe; Parquet is written as
hive partitions (billing_period=YYYY-MM) that DuckDB, Spark and Trino read as one table.
"""


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date: use YYYY-MM-DD") from e


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    e = sub.add_parser("export", help="export the ledger (FOCUS CSV/Parquet)")
    esub = e.add_subparsers(dest="what", required=True, metavar="WHAT")
    f = esub.add_parser("focus", help="FOCUS 1.2 (+1.3 columns) cost and usage rows per tenant, model and token type",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(f)
    f.add_argument("--from", dest="start", type=_date, required=True, metavar="DATE", help="first day (inclusive)")
    f.add_argument("--to", dest="end", type=_date, required=True, metavar="DATE", help="last day (exclusive)")
    f.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.csv, FILE.parquet or a directory")
    f.add_argument("--format", choices=("csv", "parquet"), help="default: from the output's extension")
    f.add_argument("--token", metavar="TOKEN", help="bearer token of the query API, when the server requires one")
    f.add_argument("--lake", action="store_true", help="export from the shared ledger (ledger.shared in --config)")
    f.set_defaults(func=cmd_export_focus)


def export_to(con: Any, out: Path, start: dt.date, end: dt.date, fmt: str, account_id: str, account_name: str,
              progress: Callable[[int], None] | None = None) -> Any:
    from ledger._focus import export_focus

    return export_focus(con, out, start=start, end=end, billing_account_id=account_id,
                        billing_account_name=account_name, fmt=fmt, progress=progress)  # type: ignore[arg-type]


def cmd_export_focus(args: argparse.Namespace) -> int:
    from ledger import LedgerError, open_read_only
    from tenantledger.cli import CliError, _config, _server_for, progress_bar

    config = _config(args)
    out = Path(args.output)
    fmt = args.format or ("parquet" if out.suffix == ".parquet" or out.suffix == "" else "csv")
    if args.end <= args.start:
        raise CliError("--to must be after --from (the period is [from, to))", code=2)
    if args.lake:
        from ledger import open_lake_read_only

        lake = open_lake_read_only(config.ledger.shared)
        try:
            s = export_to(lake, out, args.start, args.end, fmt, config.ledger.billing_account_id,
                          config.ledger.billing_account_name)
        finally:
            lake.close()
        _report(summary_dict(s), out)
        return 0
    url = _server_for(config.ledger.path)
    if url is not None:
        body = json.dumps({"from": args.start.isoformat(), "to": args.end.isoformat(), "format": fmt,
                           "name": out.name}).encode()
        req = urllib.request.Request(f"{url}/v1/export/focus", data=body,
                                     headers={"Content-Type": "application/json"})
        if args.token:
            req.add_header("Authorization", f"Bearer {args.token}")
        try:
            with urllib.request.urlopen(req, timeout=3600) as resp:
                summary = json.loads(resp.headers.get("X-Export-Summary", "{}"))
                size = int(resp.headers.get("Content-Length") or 0)
                bar = progress_bar("downloading")
                chunks: list[bytes] = []
                got = 0
                while chunk := resp.read(1 << 20):
                    chunks.append(chunk)
                    got += len(chunk)
                    bar(got, size)
                archive = b"".join(chunks)
        except urllib.error.HTTPError as e:
            raise CliError(f"export failed: {e.read().decode(errors='replace').strip()}") from e
        except urllib.error.URLError:
            url = None
        else:
            _unpack(archive, out)
            _report(summary, out)
            return 0
    con = open_read_only(config.ledger.path, config.ledger.duckdb_memory_limit_mib)
    try:
        total = con.execute("SELECT count(*) FROM focus WHERE ChargePeriodStart >= ? AND ChargePeriodStart < ?",
                            [args.start, args.end]).fetchall()[0]
        bar = progress_bar("exporting")
        s = export_to(con, out, args.start, args.end, fmt, config.ledger.billing_account_id,
                      config.ledger.billing_account_name, lambda done: bar(done, int(total[0]) if total else 0))
    except LedgerError:
        raise
    finally:
        con.close()
    _report(summary_dict(s), out)
    return 0


def summary_dict(s: Any) -> dict[str, str]:
    return {"rows": str(s.rows), "billed_cost": str(s.billed_cost), "effective_cost": str(s.effective_cost),
            "list_cost": str(s.list_cost)}


def _report(summary: dict[str, str], out: Path) -> None:
    print(f"wrote {summary.get('rows', '?')} FOCUS rows to {out} (BilledCost {summary.get('billed_cost')}, "
          f"ListCost {summary.get('list_cost')})", file=sys.stderr)


def export_archive(con: Any, start: dt.date, end: dt.date, fmt: str, name: str, account_id: str,
                   account_name: str) -> tuple[bytes, dict[str, str]]:
    """Server side: export into a private temp dir and pack it as a tar archive."""
    safe = Path(name).name or ("focus.csv" if fmt == "csv" else "focus")
    with tempfile.TemporaryDirectory(prefix="tenantledger-export-") as tmp:
        target = Path(tmp) / safe
        s = export_to(con, target, start, end, fmt, account_id, account_name)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(target, arcname=safe)
        return buf.getvalue(), summary_dict(s)


def _unpack(archive: bytes, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tenantledger-export-") as tmp, \
            tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        tar.extractall(tmp, filter="data")
        (src,) = list(Path(tmp).iterdir())
        if out.exists() and out.is_dir():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(out))
