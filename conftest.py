"""Test-session setup: 8 fake CPU devices for the sharding tests.

Must run before JAX initialises its backends, hence a root conftest.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tiny test models: compile time dominates, and XLA's heavy passes buy nothing.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
