"""Benchmark scripts: speed and memory, measured side by side (never by timed tests)."""
