"""Drift of production traffic against the training reference (Evidently, with a fast path)."""
