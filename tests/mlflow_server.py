"""A real `mlflow server` on 127.0.0.1 for tests, which a test can stop and start again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TrackingServer:
    """An `mlflow server` on 127.0.0.1 that a test can stop and start again on the same port and store."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 300.0) -> None:
        """Start the server and wait until its /health endpoint responds."""
        command = [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
            "--artifacts-destination", str(self.folder / "server-artifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            # One worker starts faster than uvicorn's default four on a busy 2-core machine.
            "--workers", "1",
        ]  # fmt: skip
        self.starts += 1
        self._log = open(self.folder / f"server-{self.starts}.log", "w")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        # Start-up took over 120 s when the machine was loaded by another study, so allow 300 s.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.folder / f"server-{self.starts}.log"
                    raise RuntimeError(f"mlflow server did not start on {self.uri}. See {log}") from None
            time.sleep(0.5)

    def stop(self) -> None:
        """Kill the server and its worker processes (one process group) at once, as a crash would."""
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=60)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
