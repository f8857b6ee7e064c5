"""Keys, prices and the ledger: who may spend what (no HTTP here)."""
