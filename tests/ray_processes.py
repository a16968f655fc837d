"""Find and kill every process of one Ray cluster that a test started, and nothing else.

`ray stop` would stop every Ray cluster of this user on the machine, the test session's own
included. So a test that starts a Ray cluster in a subprocess marks it in two ways. Every process
gets a marker variable in its environment, and the cluster gets a temporary folder of its own
(``--temp-dir`` or ``RAY_TMPDIR``) in which each of its processes keeps a log file open.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARKER_ENV = "DSSL_TEST_CLUSTER"


def _read_stat(pid: int) -> tuple[int, str] | None:
    """Return the parent pid and state letter of ``pid``, or ``None`` when it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _is_marked(pid: int, marker: str, temp_dir: Path) -> bool:
    """Return whether ``pid`` carries the cluster's marker variable or has a file open in its folder.

    Ray's Python processes rename themselves (``ray::DashboardAgent``), which overwrites the start
    of /proc/PID/environ, so the marker alone misses some of them. Every process of the cluster
    keeps a log file open in the session folder under ``temp_dir``.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if f"{MARKER_ENV}={marker}".encode() in environ:
        return True
    folder = f"{temp_dir}/"
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}").startswith(folder):
                return True
        except OSError:
            continue
    return False


def cluster_processes(marker: str, temp_dir: Path) -> set[int]:
    """Return the live processes of one cluster: the marked ones and all their descendants."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read_stat(int(name))
        if stat is not None and stat[1] != "Z":
            parents[int(name)] = stat[0]

    protected = {os.getpid(), os.getppid()}
    found = {pid for pid in parents if pid not in protected and _is_marked(pid, marker, temp_dir)}
    while True:
        children = {pid for pid, parent in parents.items() if parent in found and pid not in found}
        if not children:
            return found - protected
        found |= children


def kill_cluster(marker: str, temp_dir: Path) -> None:
    """Kill every process of the cluster with SIGKILL until none is left; fail when some survive."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        remaining = cluster_processes(marker, temp_dir)
        if not remaining:
            return
        for pid in remaining:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        time.sleep(0.5)
    remaining = cluster_processes(marker, temp_dir)
    assert not remaining, f"processes of the test cluster survived SIGKILL: {sorted(remaining)}"
