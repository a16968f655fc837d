"""Performance benchmarks of dssl; run them with ``python benchmarks/run.py [--quick]``."""

from __future__ import annotations
