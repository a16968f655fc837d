"""Performance benchmarks of dssl. Run them with ``python benchmarks/run.py [--quick]``."""

from __future__ import annotations
