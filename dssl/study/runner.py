"""Run a study: Ray Tune with Optuna over trial drivers, tracked in MLflow.

The study driver (this module) validates the study file, builds the dataset once and puts it
in Ray's object store, and opens the MLflow parent run. It then runs ``tune.Tuner`` with
``OptunaSearch``, whose Optuna study is kept in SQLite so that ``optuna-dashboard`` can show it.
A Tune callback ends any child run that a stopped or crashed trial left RUNNING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.fs
import ray
from mlflow.exceptions import MlflowException
from ray import tune
from ray.tune import CLIReporter
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from dssl.data.dataset import PairedDataset, load_dataset
from dssl.study.schema import StudySpec, dump_resolved_yaml, load_study
from dssl.study.step1_cache import Step1Coordinator
from dssl.study.space import grid_size, make_define_by_run, make_sampler
from dssl.study.storage import (
    StorageError,
    StudyStorage,
    check_reachable_from_all_nodes,
    read_json,
    redact_uri,
    resolve_storage,
    write_json,
)
from dssl.study.tracking import ERROR_TAG, TRIAL_ID_TAG, StudyTracker, resolve_tracking_uri
from dssl.study.trial import CHECKPOINT_SCORE, TrialContext, run_trial, trial_resources
from dssl.train.loop import total_epochs

logger = logging.getLogger(__name__)

STUDY_RECORD = "dssl_study.json"
"""The file in a study folder from which ``dssl resume`` restarts the study."""
STUDY_FILE = "study.yaml"

_API_SERVER_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
_DEFAULT_DASHBOARD_PORT = 8265

# Train V2's controller polls workers every 2 s by default, which adds up to 2 s per report.
# Probe metrics, which the searcher optimises, exist only in a trial's last report, so Tune's
# check that every report carries the search metric is turned off.
_RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_V2_ENABLED": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Tune's newer console output ignores a custom reporter; this one lists the study's own columns.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Keeping 2 checkpoints per trial forces an experiment snapshot at every epoch, and Tune then
    # warns about frequent snapshots after each one. The snapshots are small, so the warning is off.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}

# The MLflow client retries a failed request 7 times with a backoff factor of 2 by default, which
# took about 4 minutes when the server was down. These values took 15-20 s per call, after which
# the trial fails and the study goes on. Values set in the environment take precedence.
_MLFLOW_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


@dataclasses.dataclass(frozen=True)
class StudyOutcome:
    """Summary of a finished study."""

    name: str
    run_name: str
    parent_run_id: str
    tracking_uri: str
    experiment_name: str
    optuna_storage: str | None
    results_path: str
    trials: int
    errors: int
    best_config: dict[str, Any] | None
    best_metrics: dict[str, float] | None


class InvalidStudyInputError(ValueError):
    """Raised before any work starts when a command-line value or environment setting is invalid."""


def _resolve_storage(path: str | os.PathLike | None) -> StudyStorage:
    try:
        return resolve_storage(path)
    except StorageError as error:
        raise InvalidStudyInputError(str(error)) from None


def _make_study_dir(storage: StudyStorage, run_name: str) -> StudyStorage:
    study_dir = StudyStorage(storage.join(run_name), is_local=storage.is_local)
    try:
        filesystem, path = study_dir.filesystem()
        filesystem.create_dir(path, recursive=True)
    except OSError as error:
        raise InvalidStudyInputError(
            f"cannot create the results folder {study_dir.describe()}: {error}; pass --storage-path "
            "(or set DSSL_STORAGE_PATH) to a writable folder or bucket"
        ) from error
    return study_dir


def _check_cluster_paths(storage: StudyStorage, tracking_uri: str, shared_storage: bool) -> None:
    try:
        check_reachable_from_all_nodes(storage, tracking_uri, shared_storage=shared_storage)
    except StorageError as error:
        raise InvalidStudyInputError(str(error)) from None


def _optuna_url(study_dir: StudyStorage) -> str | None:
    """Return the Optuna database beside the study's results, or ``None`` for an in-memory study.

    SQLite needs a local file. With a URI storage path the Optuna study lives in memory and
    travels inside Tune's searcher checkpoint, so ``dssl resume`` restores it all the same.
    """
    if not study_dir.is_local:
        return None
    return f"sqlite:///{Path(study_dir.uri) / 'optuna.db'}"


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking URI that cannot work, before a study starts.

    A local SQLite store must lie in an existing folder. An HTTP tracking server must respond on its
    ``/health`` endpoint within ``timeout_s``, because the MLflow client itself retries for minutes.
    """
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise InvalidStudyInputError(
                f"the folder of the MLflow database {uri!r} does not exist; create {folder} "
                "or pass another --tracking-uri"
            )
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, ConnectionRefusedError):
                problem = "refused the connection: nothing listens there"
            else:
                problem = f"did not answer its /health check within {timeout_s:.0f} s ({reason})"
            port = urllib.parse.urlsplit(uri).port or (443 if uri.startswith("https") else 80)
            raise InvalidStudyInputError(
                f"the MLflow tracking server at {redact_uri(uri)} {problem}; start it "
                f"(mlflow server --host 127.0.0.1 --port {port}) or pass another --tracking-uri"
            ) from error


def dataset_manifest(spec: StudySpec) -> str:
    """Return the manifest the study reads: its own for ``kind: parquet``, else a cached copy.

    A built-in dataset (``synthetic``, ``digits``) is written once to the Parquet cache of
    :mod:`dssl.data.builtin`, so every study reads Parquet files and Train workers read their
    own shards for built-in and user data alike.
    """
    if spec.data.kind == "parquet":
        return spec.data.manifest
    from dssl.data.builtin import materialize

    return str(materialize(spec.data.kind, spec.data.model_dump(exclude={"kind"})))


def build_dataset(spec: StudySpec) -> PairedDataset:
    """Read the study's dataset, or with streaming only the rows that evaluation needs.

    Raises:
        InvalidStudyInputError: The Parquet files of a ``kind: parquet`` dataset fail validation;
            the message lists every problem with its file, column and row.
    """
    from dssl.data.parquet import DatasetValidationError, read_dataset

    options = spec.data.model_dump(exclude={"kind", "streaming"})
    try:
        if spec.data.kind == "parquet" and spec.data.streaming:
            return _evaluation_rows(spec)
        if spec.data.kind == "parquet":
            return load_dataset("parquet", **options)
        return read_dataset(dataset_manifest(spec))
    except DatasetValidationError as error:
        raise InvalidStudyInputError(
            f"the dataset {options.get('manifest')!r} failed validation, so nothing was started:\n{error}\n"
            "Fix the files or the manifest; 'dssl data validate MANIFEST' runs the same checks."
        ) from None


def _evaluation_rows(spec: StudySpec) -> PairedDataset:
    """Validate a streamed dataset and read only the rows that evaluation needs.

    Those are ``eval.probe_max_train_samples`` training rows, drawn with the data seed, and every
    held-out row. Training reads its rows through Ray Data (:mod:`dssl.data.streaming`).
    """
    from dssl.data.parquet import read_split, read_view, validate_dataset

    manifest = spec.data.manifest
    validate_dataset(manifest)
    train_index, test_index = read_split(manifest)
    count = min(int(spec.eval.probe_max_train_samples), train_index.size)
    probe_rows = np.sort(np.random.default_rng(spec.data.seed).choice(train_index, size=count, replace=False))
    logger.info(
        "streaming %s: %d training rows stay on disk; evaluation reads %d of them and %d held-out rows",
        manifest,
        train_index.size,
        count,
        test_index.size,
    )
    return read_view(manifest, probe_rows, test_index)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` or start a local Ray with its dashboard on 127.0.0.1.

    NOTE: Ray 2.60 still binds GCS, the raylet and workers to all interfaces when the node address
    is 127.0.0.1; only the dashboard follows ``dashboard_host``.

    Args:
        num_cpus: CPUs of a newly started local Ray (default: all of this machine's).
    """
    for key, value in {**_RAY_ENV_DEFAULTS, **_MLFLOW_RETRY_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    # Ray's state API, which Ray Train's placement-group cleaner queries at the end of every
    # multi-worker trial, finds the cluster through RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, then
    # /tmp/ray/ray_current_cluster. Only `ray start` writes that file, so without the variable the
    # query targets whatever cluster `ray start` last ran and waits 10 s for it when it is gone.
    # The job's runtime environment sets the variable in Ray's workers only: in this process it
    # would also redirect any `ray job submit` started from here.
    for attempt in range(3):
        # Another process can take the free port between the check and the dashboard's bind.
        # Ray then fails to start, so the next attempt takes a random free port.
        dashboard_port = _dashboard_port(prefer_default=attempt == 0)
        api_server = {_API_SERVER_ADDRESS_ENV: f"http://127.0.0.1:{dashboard_port}"}
        try:
            # address="local" always starts a new cluster, even when a stale file names a dead one.
            ray.init(
                address="local",
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=dashboard_port,
                _node_ip_address="127.0.0.1",
                num_cpus=num_cpus,
                log_to_driver=True,
                runtime_env={"env_vars": api_server},
            )
            return
        except Exception as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
            logger.warning(
                "the Ray dashboard could not bind port %d (%s); retrying on another port", dashboard_port, error
            )
            ray.shutdown()


def _dashboard_port(prefer_default: bool = True) -> int:
    """Return Ray's default dashboard port 8265 when it is free on 127.0.0.1, else a free port."""
    for port in (_DEFAULT_DASHBOARD_PORT, 0) if prefer_default else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # The dashboard binds with SO_REUSEADDR, so a port in TIME_WAIT is free for it too.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                logger.info("port %d is in use; the Ray dashboard takes a free port", port)
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1 for the Ray dashboard")


class _FinalMetricOptunaSearch(OptunaSearch):
    """OptunaSearch that skips per-epoch reports lacking the search metric and records failures.

    Ray 2.60's ``OptunaSearch.on_trial_result`` indexes the metric in every report and raises
    ``KeyError`` for reports that lack it; here only the final report carries probe metrics.

    A failed trial's reason, which Tune does not pass to a searcher, is read from the
    ``dssl.error`` tag of its MLflow run and stored as the Optuna user attribute ``fail_reason``.
    After ``dssl resume`` restores the searcher, Optuna trials that the killed driver had asked
    for but Tune never recorded are marked failed, so they do not stay RUNNING.
    """

    def __init__(self, *args: Any, tracking: tuple[str, str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (tracking URI, experiment, parent run id). A client is created on demand, so none is pickled.
        self._tracking = tracking

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            try:
                self._ot_trials[trial_id].set_user_attr("fail_reason", self._failure_reason(trial_id))
            except Exception:  # the searcher must go on even when the reason cannot be stored
                logger.exception("could not store the failure reason of trial %s in Optuna", trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)

    def _failure_reason(self, trial_id: str) -> str:
        fallback = "the trial failed; see error.txt in its Tune trial folder"
        if self._tracking is None:
            return fallback
        uri, experiment, parent_run_id = self._tracking
        try:
            tracker = StudyTracker(uri, experiment)
            run_id = tracker.find_trial_run(parent_run_id, trial_id)
            if run_id is None:
                return fallback
            return tracker.client.get_run(run_id).data.tags.get(ERROR_TAG, fallback)[:2000]
        except Exception:
            logger.warning("could not read the failure of trial %s from MLflow", trial_id, exc_info=True)
            return fallback

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {trial.number for trial in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number in known:
                continue
            self._ot_study._storage.set_trial_user_attr(
                frozen._trial_id,
                "fail_reason",
                "the study driver stopped after Optuna proposed this trial and before Ray Tune started it",
            )
            self._ot_study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            logger.info("Optuna trial %d was never started by Tune: marked FAIL", frozen.number)


class _TrialRunCloser(tune.Callback):
    """End the MLflow run of every trial that stops, fails or is early-stopped while RUNNING.

    An exception raised here would abort ``Tuner.fit`` for every trial, so errors are logged.
    """

    def __init__(self, tracker: StudyTracker, parent_run_id: str) -> None:
        self.tracker = tracker
        self.parent_run_id = parent_run_id

    def _close(self, trial: Any, status: str, error: str | None = None) -> None:
        try:
            run_id = self.tracker.find_trial_run(self.parent_run_id, trial.trial_id)
            if run_id is None:
                return
            if error is not None and self.tracker.status(run_id) == "RUNNING":
                self.tracker.set_tags(run_id, {ERROR_TAG: error[:4000]})
            if self.tracker.finish_if_running(run_id, status):
                logger.info("trial %s ended while its MLflow run was RUNNING: marked %s", trial.trial_id, status)
        except Exception:
            logger.exception("could not close the MLflow run of trial %s", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "KILLED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A trial whose process died leaves its run RUNNING without an error tag.
        self._close(trial, "FAILED", error=_tune_error(trial))


def _tune_error(trial: Any) -> str:
    """Return the last line of a Tune trial's error (its exception type and message)."""
    text = None
    try:
        # Tune writes error.txt in the trial's local folder first and uploads it later.
        local = trial.error_file
        text = Path(local).read_text() if local and Path(local).is_file() else trial.get_error()
    except Exception:
        logger.debug("could not read the error of trial %s", trial.trial_id, exc_info=True)
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "the trial's process failed; see error.txt in its Tune trial folder"


def _metric_and_mode(spec: StudySpec) -> tuple[str | list[str], str | list[str]]:
    return spec.search.metric, spec.search.mode


def _build_searcher(
    spec: StudySpec, optuna_url: str | None, study_name: str, tracking: tuple[str, str, str]
) -> OptunaSearch:
    metric, mode = _metric_and_mode(spec)
    storage = None
    if optuna_url is not None:
        storage = optuna.storages.RDBStorage(url=optuna_url, engine_kwargs={"connect_args": {"timeout": 30}})
    return _FinalMetricOptunaSearch(
        space=make_define_by_run(spec),
        metric=metric,
        mode=mode,
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=storage,
        tracking=tracking,
    )


def _build_scheduler(spec: StudySpec) -> ASHAScheduler | None:
    if spec.search.scheduler != "asha":
        return None
    asha = spec.search.asha
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=asha.metric or spec.search.metric,
        mode=asha.mode or spec.search.mode,
        max_t=total_epochs(spec.method) + 1,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


def _build_reporter(spec: StudySpec) -> CLIReporter:
    """Return the console trial table: sampled settings, epoch, losses and the study metrics."""
    metrics = [spec.search.metric] if isinstance(spec.search.metric, str) else list(spec.search.metric)
    columns = {"epoch": "epoch", "step1/train/loss": "step1 loss", "mi/shared_infonce_lower_bound": "I_nce (nats)"}
    if spec.method.step2.enabled:
        columns["step2/train/loss"] = "step2 loss"
    columns.update({metric: metric for metric in metrics})
    searched = [*spec.search.space, *(path for block in spec.search.grids for path in block)]
    parameters = {name: name for name in searched} | {"seed": "seed"}
    return CLIReporter(
        metric_columns=columns,
        parameter_columns=parameters,
        max_report_frequency=15,
        sort_by_metric=False,
    )


def _num_trials(spec: StudySpec) -> int:
    if spec.search.algorithm == "grid":
        return grid_size(spec)
    return spec.search.num_trials


def run_study(
    study_path: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    storage_path: str | os.PathLike | None = None,
    shared_storage: bool = False,
) -> StudyOutcome:
    """Validate and run the study in ``study_path``; return its outcome.

    Args:
        study_path: The study YAML file.
        tracking_uri: MLflow tracking URI; defaults to ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        storage_path: Local folder or ``pyarrow.fs`` URI for Tune results, checkpoints and the
            Optuna database; defaults to ``DSSL_STORAGE_PATH`` or ``./dssl_results``.
        shared_storage: Local paths (the storage folder, a SQLite store) lie on storage that every
            node of the cluster mounts.

    Raises:
        dssl.study.schema.StudyValidationError: The study file is invalid (nothing has started).
        InvalidStudyInputError: The tracking URI, the storage path or the dataset cannot be used
            (nothing has started).
    """
    spec = load_study(study_path)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    storage = _resolve_storage(storage_path)
    dataset = build_dataset(spec)
    ensure_ray()
    _check_cluster_paths(storage, uri, shared_storage)

    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    study_dir = _make_study_dir(storage, run_name)
    optuna_url = _optuna_url(study_dir)
    experiment_name = spec.tracking.experiment or spec.name
    tracker = _open_tracker(uri, experiment_name)
    parent_run_id = tracker.start_study_run(
        run_name,
        params={
            "study.name": spec.name,
            "search.algorithm": spec.search.algorithm,
            "search.metric": spec.search.metric,
            "search.mode": spec.search.mode,
            "search.num_trials": _num_trials(spec),
            "search.max_concurrent": spec.search.max_concurrent,
            "search.seeds": spec.search.seeds,
            "resources.num_workers": spec.resources.num_workers,
            "resources.max_failures": spec.resources.max_failures,
            "data.kind": spec.data.kind,
        },
        tags={
            "dssl.kind": "study",
            "dssl.study_file": str(Path(study_path)),
            "dssl.optuna_storage": optuna_url or "in memory, inside the Tune searcher checkpoint",
            "dssl.study_dir": study_dir.describe(),
        },
    )
    resolved_yaml = dump_resolved_yaml(spec)
    tracker.log_text(parent_run_id, resolved_yaml, STUDY_FILE)
    _write_study_record(study_dir, resolved_yaml, uri, experiment_name, parent_run_id, run_name, optuna_url)
    logger.info(
        "study %s: MLflow run %s in experiment %r at %s", spec.name, parent_run_id, experiment_name, redact_uri(uri)
    )
    where = study_dir.describe()
    logger.info("study %s: results in %s; resume with 'dssl resume %s'", spec.name, where, where)
    return _execute(spec, dataset, tracker, parent_run_id, study_dir, optuna_url, run_name, restore=False)


def resume_study(
    study_dir: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    shared_storage: bool = False,
) -> StudyOutcome:
    """Finish a study whose driver stopped (killed, node lost, ``ray job stop``).

    Tune restores its experiment from ``study_dir``: finished trials stay finished, trials that
    were running restart from their last checkpoint and continue their MLflow runs, the searcher
    (Optuna) continues from its saved state, and the remaining trials run.

    Args:
        study_dir: The study's folder, ``<storage path>/<study name>-<date>-<time>``, local or a URI.
        tracking_uri: The tracking URI, when the stored one lacks credentials or has moved.
        shared_storage: As for :func:`run_study`.

    Raises:
        InvalidStudyInputError: ``study_dir`` is not a dssl study folder, or a path cannot be used.
    """
    folder = _resolve_storage(study_dir)
    filesystem, path = folder.filesystem()
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise InvalidStudyInputError(
            f"study folder {folder.describe()} not found; pass the folder that 'dssl run' printed, "
            "<storage path>/<study name>-<date>-<time>"
        )
    try:
        record = read_json(folder, STUDY_RECORD)
    except FileNotFoundError:
        raise InvalidStudyInputError(
            f"{STUDY_RECORD} is missing in {folder.describe()}, so it is not the folder of a study "
            "started by 'dssl run'; pass the study's folder, <storage path>/<study name>-<date>-<time> "
            "('dssl run' prints it)"
        ) from None
    with _study_file_copy(folder) as study_file:
        spec = load_study(study_file)
    uri = resolve_tracking_uri(tracking_uri or record["tracking_uri"])
    check_tracking_uri(uri)
    tracker = _open_tracker(uri, record["experiment_name"])
    parent_run_id = record["parent_run_id"]
    status = tracker.status(parent_run_id)
    if status == "FINISHED":
        raise InvalidStudyInputError(
            f"the study in {folder.describe()} already finished (MLflow run {parent_run_id}); "
            "nothing to resume. Start a new one with 'dssl run'"
        )
    dataset = build_dataset(spec)
    ensure_ray()
    _check_cluster_paths(folder, uri, shared_storage)

    tracker.client.update_run(parent_run_id, status="RUNNING")
    resumes = int(tracker.client.get_run(parent_run_id).data.tags.get("dssl.resumed", "0")) + 1
    tracker.set_tags(parent_run_id, {"dssl.resumed": str(resumes)})
    logger.info("study %s: resuming %s (MLflow run %s, was %s)", spec.name, folder.describe(), parent_run_id, status)
    return _execute(
        spec, dataset, tracker, parent_run_id, folder, record.get("optuna_storage"), record["run_name"], restore=True
    )


def _open_tracker(uri: str, experiment_name: str) -> StudyTracker:
    try:
        return StudyTracker(uri, experiment_name)
    except MlflowException as error:
        raise InvalidStudyInputError(
            f"could not open the MLflow tracking store {redact_uri(uri)!r}: {error}; pass --tracking-uri "
            "with a reachable store, e.g. sqlite:///mlflow.db or http://127.0.0.1:5000"
        ) from error


def _write_study_record(
    study_dir: StudyStorage,
    resolved_yaml: str,
    uri: str,
    experiment_name: str,
    parent_run_id: str,
    run_name: str,
    optuna_url: str | None,
) -> None:
    """Store what ``dssl resume`` needs, with the tracking URI stripped of credentials."""
    filesystem, path = study_dir.filesystem()
    with filesystem.open_output_stream(f"{path}/{STUDY_FILE}") as stream:
        stream.write(resolved_yaml.encode())
    record = {
        "tracking_uri": redact_uri(uri),
        "experiment_name": experiment_name,
        "parent_run_id": parent_run_id,
        "run_name": run_name,
        "optuna_storage": optuna_url,
    }
    write_json(study_dir, STUDY_RECORD, record)


@contextlib.contextmanager
def _study_file_copy(folder: StudyStorage) -> Iterator[Path]:
    """Yield a local copy of the study folder's ``study.yaml``, read through ``pyarrow.fs``."""
    filesystem, path = folder.filesystem()
    with tempfile.TemporaryDirectory(prefix="dssl-resume-") as temporary:
        local = Path(temporary) / STUDY_FILE
        with filesystem.open_input_stream(f"{path}/{STUDY_FILE}") as stream:
            local.write_bytes(stream.read())
        yield local


def _execute(
    spec: StudySpec,
    dataset: PairedDataset,
    tracker: StudyTracker,
    parent_run_id: str,
    study_dir: StudyStorage,
    optuna_url: str | None,
    run_name: str,
    *,
    restore: bool,
) -> StudyOutcome:
    """Run (or restore) the Tuner, then summarise, close the runs and write the report."""
    uri = tracker.tracking_uri
    experiment_name = tracker.experiment_name
    try:
        context = TrialContext(
            spec=spec,
            data_manifest=dataset_manifest(spec),
            tracking_uri=uri,
            experiment_name=experiment_name,
            parent_run_id=parent_run_id,
            dataset_ref=ray.put(dataset),
            storage_path=study_dir.uri,
            step1_coordinator=Step1Coordinator.remote() if spec.tracking.reuse_step1 else None,
        )
        results = _fit(spec, context, tracker, optuna_url, run_name, study_dir, restore=restore)
        outcome = _summarise(
            spec, results, tracker, parent_run_id, uri, experiment_name, optuna_url, study_dir, run_name
        )
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            tracker.set_tags(parent_run_id, {ERROR_TAG: f"{type(error).__name__}: {error}"[:4000]})
            _close_children(tracker, parent_run_id, "KILLED")
            tracker.finish_if_running(parent_run_id, status)
        except Exception:  # the study's own error matters more than a tracking failure
            logger.exception("could not mark the MLflow runs of study %s as %s", spec.name, status)
        raise
    _close_children(tracker, parent_run_id, "KILLED", errors=_trial_errors(results))
    # A failed trial does not fail the study: its own run is FAILED and the count is logged.
    tracker.log_metrics(parent_run_id, {"trials/total": outcome.trials, "trials/failed": outcome.errors}, step=0)
    tracker.finish(parent_run_id, "FINISHED")
    report_dir = Path(study_dir.uri) / "report" if study_dir.is_local else Path("reports") / run_name
    _report_study(spec.name, uri, parent_run_id, report_dir)
    return outcome


def _report_study(study_name: str, uri: str, parent_run_id: str, out_dir: Path) -> Path | None:
    """Write the study's report into ``out_dir`` and onto its parent run, and return the folder.

    A report failure is logged and returns ``None``, because the trials and their runs are already stored.
    """
    try:
        from dssl.study.report import build_report

        result = build_report(study_name, uri, out_dir, parent_run_id=parent_run_id)
    except Exception:
        logger.exception(
            "study %s: the report could not be written; retry with "
            "'dssl report %s --tracking-uri %s --parent-run-id %s'",
            study_name,
            study_name,
            uri,
            parent_run_id,
        )
        return None
    logger.info(
        "study %s: report in %s (%d figures, %d skipped)",
        study_name,
        result.out_dir,
        len(result.figures),
        len(result.skipped),
    )
    return result.out_dir


def _fit(
    spec: StudySpec,
    context: TrialContext,
    tracker: StudyTracker,
    optuna_url: str | None,
    run_name: str,
    study_dir: StudyStorage,
    *,
    restore: bool,
) -> tune.ResultGrid:
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(spec))
    if restore:
        # Tune restores the searcher, the scheduler and the run config from the study folder.
        tuner = tune.Tuner.restore(
            study_dir.uri, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
        return tuner.fit()

    tracking = (tracker.tracking_uri, tracker.experiment_name, context.parent_run_id)
    searcher = _build_searcher(spec, optuna_url, run_name, tracking)
    storage_root, _ = study_dir.split()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_build_scheduler(spec),
            num_samples=_num_trials(spec),
            max_concurrent_trials=spec.search.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_root,
            callbacks=[_TrialRunCloser(tracker, context.parent_run_id)],
            progress_reporter=_build_reporter(spec),
            # 1 prints the trial table only; higher levels also print every epoch's full result.
            verbose=1,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.eval.checkpoints_to_keep,
                checkpoint_score_attribute=CHECKPOINT_SCORE,
                checkpoint_score_order=spec.search.modes[0],
            ),
            # Restarts after a lost process or node. A trial whose own code raised fails at once
            # on each restart (dssl.study.trial.TrialFailedBeforeError).
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        ),
    )
    return tuner.fit()


# Tune names a trial's folder <trainable>_<trial id>_<counter>_<config>_<date>, and a trial that a
# searcher suggests (every trial of a study) gets 8 hex digits as its id.
_TRIAL_ID_IN_FOLDER = re.compile(r"^run_trial_([0-9a-f]{8})_\d+_")


def _trial_errors(results: tune.ResultGrid) -> dict[str, str]:
    """Return the error of each failed trial, by trial id (the last line of Tune's error)."""
    errors = {}
    for result in results:
        if result.error is None:
            continue
        trial_id = (result.metrics or {}).get("trial_id")
        if not isinstance(trial_id, str):
            # A trial that failed before its first report has no metrics, so its id comes from
            # its folder's name.
            match = _TRIAL_ID_IN_FOLDER.search(Path(result.path).name)
            if match is None:
                continue
            trial_id = match.group(1)
        lines = [line for line in str(result.error).splitlines() if line.strip()]
        errors[trial_id] = lines[-1] if lines else type(result.error).__name__
    return errors


def _close_children(
    tracker: StudyTracker, parent_run_id: str, status: str, errors: dict[str, str] | None = None
) -> None:
    """End every child run left RUNNING: FAILED with Tune's error for a failed trial, else ``status``.

    A run stays RUNNING when its trial could not reach the tracking server when it failed.
    """
    errors = errors or {}
    for run in tracker.trial_runs(parent_run_id):
        if run.info.status != "RUNNING":
            continue
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        if trial_id in errors:
            tracker.set_tags(run.info.run_id, {ERROR_TAG: errors[trial_id][:4000]})
            tracker.finish(run.info.run_id, "FAILED")
            logger.info("MLflow run %s of failed trial %s was left RUNNING: marked FAILED", run.info.run_id, trial_id)
            continue
        tracker.finish(run.info.run_id, status)
        logger.info("MLflow run %s of trial %s was left RUNNING: marked %s", run.info.run_id, trial_id, status)


def _finite_metric(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _summarise(
    spec: StudySpec,
    results: tune.ResultGrid,
    tracker: StudyTracker,
    parent_run_id: str,
    uri: str,
    experiment_name: str,
    optuna_url: str | None,
    study_dir: StudyStorage,
    run_name: str,
) -> StudyOutcome:
    metric = spec.search.metric if isinstance(spec.search.metric, str) else spec.search.metric[0]
    mode = spec.search.mode if isinstance(spec.search.mode, str) else spec.search.mode[0]
    best_config, best_metrics = None, None
    finished = [r for r in results if r.error is None and r.metrics and _finite_metric(r.metrics.get(metric))]
    if finished:
        best = max(finished, key=lambda r: r.metrics[metric] if mode == "max" else -r.metrics[metric])
        best_config = dict(best.config)
        best_metrics = {k: float(v) for k, v in best.metrics.items() if k.startswith("probe/") and _finite_metric(v)}
        summary = {f"best/{metric}": float(best.metrics[metric])}
        summary.update({f"best/{k}": v for k, v in best_metrics.items()})
        tracker.log_metrics(parent_run_id, summary, step=0)
        tracker.set_tags(parent_run_id, {"dssl.best_config": str(best_config)})

    errors = sum(1 for r in results if r.error is not None)
    return StudyOutcome(
        name=spec.name,
        run_name=run_name,
        parent_run_id=parent_run_id,
        tracking_uri=uri,
        experiment_name=experiment_name,
        optuna_storage=optuna_url,
        results_path=study_dir.describe(),
        trials=len(results),
        errors=errors,
        best_config=best_config,
        best_metrics=best_metrics,
    )
