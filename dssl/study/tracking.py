"""MLflow run lifecycle for studies: one experiment per study, a parent run, one child per trial.

Every call goes through :class:`mlflow.MlflowClient` with explicit run ids, never through
MLflow's process-global "active run", because trial drivers run in Ray actors that are reused
across trials.

The default store is a SQLite database ``mlflow.db`` in the working folder with artifacts in
``mlartifacts/`` beside it. ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` select another store,
for example ``http://127.0.0.1:5000`` for a tracking server.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = "mlflow.db"
DEFAULT_ARTIFACT_FOLDER = "mlartifacts"
TRIAL_ID_TAG = "dssl.trial_id"
STUDY_RUN_TAG = "dssl.study_run_id"
PARENT_TAG = "mlflow.parentRunId"
ERROR_TAG = "dssl.error"
# "trial" when the trial's own code raised (a restart would fail the same way), else absent.
ERROR_KIND_TAG = "dssl.error_kind"
# The last epoch whose metrics are stored, written in the same batch as those metrics.
LOGGED_EPOCH_TAG = "dssl.logged_epoch"
FINAL_LOGGED_TAG = "dssl.final_logged"
# How often Tune restarted the trial from a checkpoint, and the epoch of the latest restart.
RESTARTS_TAG = "dssl.restarts"
RESUMED_FROM_TAG = "dssl.resumed_from_epoch"
# How often a multi-worker trial's worker group failed (Ray Train restarts it up to
# resources.max_failures times), and the latest worker error.
WORKER_GROUP_FAILURES_TAG = "dssl.worker_group_failures"
WORKER_ERROR_TAG = "dssl.worker_error"

_INVALID_NAME_CHARACTERS = re.compile(r"[^/\w.\- ]")
_MAX_PARAM_LENGTH = 500
_BATCH_LIMIT = 900


def resolve_tracking_uri(uri: str | None = None, working_dir: str | os.PathLike | None = None) -> str:
    """Return the tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else local SQLite.

    A relative ``sqlite:///`` path is made absolute against ``working_dir`` (default: the
    current folder) so that Ray actors, whose working folder differs, write to the same file.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    base = Path(working_dir or os.getcwd()).resolve()
    if not chosen:
        return f"sqlite:///{base / DEFAULT_DATABASE}"
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        relative = chosen[len("sqlite:///") :]
        return f"sqlite:///{(base / relative).resolve()}"
    return chosen


def default_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Return the artifact folder for a new experiment on a local SQLite store, else ``None``.

    A tracking server chooses its own artifact store, so no location is set for it.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri[len("sqlite:///") :])
    return (database.parent / DEFAULT_ARTIFACT_FOLDER / experiment_name).resolve().as_uri()


def sanitize_name(name: str) -> str:
    """Replace characters MLflow rejects in metric and parameter names with ``_``."""
    return _INVALID_NAME_CHARACTERS.sub("_", name)


@dataclasses.dataclass(frozen=True)
class TrialRun:
    """A trial's MLflow run and what an earlier attempt of the trial already stored in it.

    Attributes:
        run_id: The child run.
        logged_epoch: The last epoch whose metrics the run contains (0 for a new run).
        final_logged: Whether the final evaluation's metrics are stored.
        failure: The error of an earlier attempt whose own code raised, else ``None``.
        restarts: How often Tune restarted the trial from a checkpoint before this attempt.
    """

    run_id: str
    logged_epoch: int = 0
    final_logged: bool = False
    failure: str | None = None
    restarts: int = 0


def log_metrics(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, Any],
    step: int,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log the numeric entries of ``metrics`` at ``step``; non-finite values are also logged as warnings.

    ``tags`` are written in the same request as the last metrics, so that a store that keeps the
    tags also keeps the metrics.
    """
    timestamp = int(time.time() * 1000)
    items = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            logger.warning("run %s: metric %s is %s at step %d", run_id, key, value, step)
        items.append(Metric(sanitize_name(key), float(value), timestamp, step))
    tag_items = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    starts = list(range(0, len(items), _BATCH_LIMIT)) or [0]
    for start in starts:
        last = start == starts[-1]
        client.log_batch(
            run_id,
            metrics=items[start : start + _BATCH_LIMIT],
            tags=tag_items if last else [],
            synchronous=True,
        )


def log_epoch_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], epoch: int) -> None:
    """Log one epoch's metrics at step ``epoch`` and record the epoch as logged (:data:`LOGGED_EPOCH_TAG`)."""
    log_metrics(client, run_id, metrics, step=epoch, tags={LOGGED_EPOCH_TAG: str(epoch)})


class StudyTracker:
    """Create and finish the MLflow runs of one study.

    Args:
        tracking_uri: The resolved tracking URI (see :func:`resolve_tracking_uri`).
        experiment_name: The experiment that contains the study's runs, created when missing.
    """

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._ensure_experiment()

    def _ensure_experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        location = default_artifact_location(self.tracking_uri, self.experiment_name)
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

    def start_study_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial_run(
        self,
        parent_run_id: str,
        trial_id: str,
        run_name: str,
        params: Mapping[str, Any],
    ) -> TrialRun:
        """Return the child run of ``trial_id``: a new one, or the one an earlier attempt left.

        A restarted trial (after its process, a worker or the study driver died) continues its
        run, and the returned :class:`TrialRun` lists what the run already contains.
        """
        existing = self.find_trial_run(parent_run_id, trial_id)
        if existing is not None:
            tags = self.client.get_run(existing).data.tags
            failure = tags.get(ERROR_TAG) if tags.get(ERROR_KIND_TAG) == "trial" else None
            if failure is None:
                self.client.update_run(existing, status="RUNNING")
                logger.info("trial %s continues MLflow run %s", trial_id, existing)
            return TrialRun(
                run_id=existing,
                logged_epoch=int(tags.get(LOGGED_EPOCH_TAG, 0)),
                final_logged=tags.get(FINAL_LOGGED_TAG) == "true",
                failure=failure,
                restarts=int(tags.get(RESTARTS_TAG, 0)),
            )
        tags = {PARENT_TAG: parent_run_id, TRIAL_ID_TAG: trial_id, STUDY_RUN_TAG: parent_run_id}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return TrialRun(run_id=run.info.run_id)

    def find_trial_run(self, parent_run_id: str, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_RUN_TAG}` = '{parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def trial_runs(self, parent_run_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_RUN_TAG}` = '{parent_run_id}'",
            max_results=10_000,
        )

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [
            Param(sanitize_name(key), str(value)[:_MAX_PARAM_LENGTH]) for key, value in sorted(params.items())
        ]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100], synchronous=True)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        log_metrics(self.client, run_id, metrics, step)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"invalid terminal run status {status!r}; expected FINISHED, FAILED or KILLED")
        self.client.set_terminated(run_id, status=status)

    def finish_if_running(self, run_id: str, status: str) -> bool:
        """End a run that is still RUNNING with ``status``; return whether it was running."""
        if self.status(run_id) != RunStatus.to_string(RunStatus.RUNNING):
            return False
        self.finish(run_id, status)
        return True
