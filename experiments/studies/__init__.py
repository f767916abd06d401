"""Accuracy studies on the shared data (one command per table; finished runs are skipped)."""
