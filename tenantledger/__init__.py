"""tenantledger: the entry point (CLI and wiring) of the receiver -> processors -> ledger pipeline."""

__version__ = "0.1.0"
