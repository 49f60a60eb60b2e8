"""FinOps features over the ledger contract: budgets and alerts, anomalies, concentration, the attribution
audit, reconciliation with provider exports and chargeback statements. They only read the ledger's views.
"""

from tenantledger.finops._anomalies import AnomaliesConfig, find_anomalies
from tenantledger.finops._audit import audit
from tenantledger.finops._budgets import BudgetLimit, BudgetMonitor, BudgetsConfig, WebhookConfig, budget_status
from tenantledger.finops._common import FinopsError, Period, QueryFn, Table
from tenantledger.finops._concentration import concentration
from tenantledger.finops._reconcile import PROVIDER_FORMATS, load_provider_export, reconcile
from tenantledger.finops._statement import StatementsConfig, statement

__all__ = [
    "AnomaliesConfig",
    "BudgetLimit",
    "BudgetMonitor",
    "BudgetsConfig",
    "FinopsError",
    "PROVIDER_FORMATS",
    "Period",
    "QueryFn",
    "StatementsConfig",
    "Table",
    "WebhookConfig",
    "audit",
    "budget_status",
    "concentration",
    "find_anomalies",
    "load_provider_export",
    "reconcile",
    "statement",
]
