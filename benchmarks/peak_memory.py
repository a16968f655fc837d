"""Peak memory of one full-size training run, measured in a fresh process.

The child process (this file run as a script) imports dssl, builds the full synthetic dataset
(90,000 rows), trains step 1 and step 2 for one epoch each with
:func:`dssl.train.loop.train_trial` on one thread at the reference configuration, and prints
one JSON line with its peak resident set size (``ru_maxrss``) and the RSS after each stage.
The parent (:func:`measure_peak_memory`) starts it and parses that line.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_RESULT_PREFIX = "PEAK_MEMORY_RESULT "
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _current_rss_mib() -> float:
    """Return the current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(n_samples: int) -> dict[str, Any]:
    """Build the dataset, train one epoch of each step and return the memory figures."""
    started = time.perf_counter()
    import torch

    sys.path.insert(0, str(_REPO_ROOT))
    from benchmarks.throughput import paper_method
    from dssl.data.synthetic import make_synthetic
    from dssl.train.loop import train_trial

    torch.set_num_threads(1)
    stages = {"after_imports_mib": _current_rss_mib()}

    dataset = make_synthetic(n_samples=n_samples, seed=0)
    stages["after_dataset_mib"] = _current_rss_mib()

    method = paper_method(step1_epochs=1, step2_epochs=1)
    models = train_trial(dataset, method, seed=0)
    stages["after_training_mib"] = _current_rss_mib()
    if "step2" not in models.phases:
        raise RuntimeError("step 2 did not run")

    return {
        "peak_rss_mib": _peak_rss_mib(),
        **stages,
        "n_samples": n_samples,
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }


def measure_peak_memory(n_samples: int = 90_000, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run the training in a fresh Python process and return its peak memory.

    Args:
        n_samples: Rows of the synthetic dataset (90,000 is the full benchmark).
        timeout_s: Seconds after which the child is stopped.

    Returns:
        ``peak_rss_mib`` (the child's ``ru_maxrss``), the RSS after imports, after building the
        dataset and after training (MiB), ``n_samples``, ``seconds`` and ``threads``.

    Raises:
        RuntimeError: If the child fails or prints no result.
    """
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(n_samples)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=environment,
        cwd=_REPO_ROOT,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    raise RuntimeError(
        f"peak-memory child exited with {completed.returncode} and no result; stderr tail:\n"
        f"{completed.stderr[-2000:]}"
    )


if __name__ == "__main__":
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 90_000
    sys.stdout.write(_RESULT_PREFIX + json.dumps(_child(rows)) + "\n")
