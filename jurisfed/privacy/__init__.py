"""Differential privacy at the regional: accounting (dp_accounting RDP), the ledger, reports."""
