"""The Ray Train callback that logs multi-worker trials to MLflow and forwards them to Tune."""

from __future__ import annotations

import logging
from typing import Any

from mlflow import MlflowClient
from ray.tune.integration.ray_train import TuneReportCallback

from dssl.study.tracking import WORKER_ERROR_TAG, WORKER_GROUP_FAILURES_TAG, log_epoch_metrics
from dssl.train.loop import CHECKPOINT_SCORE, NON_FINITE_LOSS_KEY

logger = logging.getLogger(__name__)


class MlflowTuneReportCallback(TuneReportCallback):
    """Log each epoch's rank-0 metrics to the trial's MLflow run, then forward them to Ray Tune.

    It runs in the Ray Train controller, so the platform, not the workers, writes to MLflow.
    After a restart of the worker group the epochs come again from the latest checkpoint. An
    epoch whose metrics the run already contains is forwarded to Tune but not logged twice.

    Args:
        tracking_uri: The MLflow tracking URI.
        run_id: The trial's child run, created by the trial driver.
        logged_epoch: The last epoch an earlier attempt of the trial logged to the run.
    """

    def __init__(self, tracking_uri: str, run_id: str, logged_epoch: int = 0) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.logged_epoch = logged_epoch
        self._client: MlflowClient | None = None
        self._worker_failures = 0

    def _mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """Record on the run that workers failed; Ray Train then restarts the group or gives up."""
        self._worker_failures += 1
        rank, error = min(worker_exceptions.items(), key=lambda item: item[0])
        summary = f"rank {rank}: {type(error).__name__}: {error}"[:4000]
        try:
            self._mlflow().set_tag(self.run_id, WORKER_GROUP_FAILURES_TAG, str(self._worker_failures))
            self._mlflow().set_tag(self.run_id, WORKER_ERROR_TAG, summary)
        except Exception:  # an error here would end the Ray Train run instead of restarting it
            logger.exception("could not record the worker failure on MLflow run %s", self.run_id)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        rank0 = metrics[0]
        epoch = int(rank0.get("epoch", 0))
        if NON_FINITE_LOSS_KEY not in rank0 and epoch > self.logged_epoch:
            logged = {key: value for key, value in rank0.items() if key != CHECKPOINT_SCORE}
            log_epoch_metrics(self._mlflow(), self.run_id, logged, epoch)
            self.logged_epoch = epoch
        super().after_report(run_context, metrics, checkpoint)
