"""The store: stored aggregates (audit log, registry, ledger, data, cycles) in one database."""

from adapters.store.db import Store, normalise_db_url, utcnow_iso

__all__ = ["Store", "normalise_db_url", "utcnow_iso"]
