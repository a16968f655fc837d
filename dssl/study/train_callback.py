"""The Ray Train callback that logs multi-worker trials to MLflow and forwards them to Tune."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from ray.tune.integration.ray_train import TuneReportCallback

from dssl.study.tracking import log_metrics


class MlflowTuneReportCallback(TuneReportCallback):
    """Log each epoch's rank-0 metrics to the trial's MLflow run, then forward them to Ray Tune.

    It runs in the Ray Train controller, so the platform, not the workers, writes to MLflow.

    Args:
        tracking_uri: The MLflow tracking URI.
        run_id: The trial's child run, created by the trial driver.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client: MlflowClient | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        rank0 = metrics[0]
        log_metrics(self._client, self.run_id, rank0, step=int(rank0.get("epoch", 0)))
        super().after_report(run_context, metrics, checkpoint)
