"""Batches (docs/batches.md): item bodies in and results out, the runner, webhooks."""
