"""The trial driver: the Ray Tune function trainable that runs, evaluates and logs one trial.

A single-worker trial trains in the driver's own process, which Tune gives the trial's CPUs
and GPUs. Starting a Ray Train worker group costs 8-10 s (Ray 2.60, Train V2) and buys nothing
for one worker. A multi-worker trial builds a ``TorchTrainer`` whose workers train
data-parallel; the driver then holds no CPU of its own.

Either way the driver creates the trial's MLflow child run, logs every epoch's metrics and
checkpoint, evaluates the final model with linear probes, reports to Tune and ends the run with
FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow import MlflowClient
from ray import tune

from dssl.data.dataset import PairedDataset
from dssl.eval.evaluate import evaluate_trial
from dssl.eval.mi_diagnostics import MIDiagnosticsSettings
from dssl.methods.registry import reuses_step1
from dssl.study.schema import MethodSpec, StudySpec, flatten_params, resolve_method
from dssl.study.space import method_overrides, seed_of
from dssl.study.step1_cache import obtain_step1, publish_step1, step1_key
from dssl.study.storage import StudyStorage
from dssl.study.tracking import (
    ERROR_KIND_TAG,
    ERROR_TAG,
    FINAL_LOGGED_TAG,
    RESTARTS_TAG,
    RESUMED_FROM_TAG,
    StudyTracker,
    TrialRun,
    log_epoch_metrics,
    log_metrics,
)
from dssl.train.checkpoint import load_state, save_state
from dssl.train.loop import (
    CHECKPOINT_SCORE,
    NON_FINITE_LOSS_KEY,
    NonFiniteLossError,
    TrainedModels,
    TrainingState,
    restore_models,
    total_epochs,
    train_trial,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """Settings and data shared by every trial of a study, passed through Ray's object store."""

    spec: StudySpec
    tracking_uri: str
    experiment_name: str
    parent_run_id: str
    dataset_ref: Any
    storage_path: str
    step1_coordinator: Any | None = None
    data_manifest: str | None = None


def trial_resources(spec: StudySpec) -> dict[str, float]:
    """Return the Tune resources of one trial driver."""
    resources = spec.resources
    if resources.num_workers == 1:
        request = {"cpu": float(resources.cpus_per_worker)}
        if resources.gpus_per_worker:
            request["gpu"] = float(resources.gpus_per_worker)
        return request
    # The driver only waits on the TorchTrainer; a CPU held here would keep a worker from
    # being scheduled. Ray rejects an all-zero request, so ask for a little memory instead.
    return {"cpu": 0.0, "memory": float(64 * 1024**2)}


class TrialFailedBeforeError(RuntimeError):
    """Raised when Tune restarts a trial whose own code failed, so that it fails again at once.

    Tune restarts a failed trial up to ``resources.max_failures`` times whatever the cause. Only a
    lost process, worker or node deserves a restart, because an error of the trial itself (a
    non-finite loss, a bad setting) would recur.
    """


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Run one trial: train, evaluate and log. Used as ``tune.with_parameters(run_trial, ...)``."""
    tune_context = tune.get_context()
    trial_id = tune_context.get_trial_id()
    seed = seed_of(config)
    method = resolve_method(context.spec, method_overrides(config))

    tracker = StudyTracker(context.tracking_uri, context.experiment_name)
    params = {**flatten_params(method), "seed": seed, "trial_id": trial_id}
    params.update(_resource_params(context.spec))
    trial_run = tracker.start_trial_run(context.parent_run_id, trial_id, tune_context.get_trial_name(), params)
    if trial_run.failure is not None:
        raise TrialFailedBeforeError(
            f"trial {trial_id} is not trained again, because its own code failed before this restart: "
            f"{trial_run.failure}"
        )
    run_id = trial_run.run_id

    step1 = _Step1Reuse(context, tracker, run_id, trial_id)
    try:
        started = time.perf_counter()
        step1.prepare(method, seed)
        dataset = ray.get(context.dataset_ref)
        if context.spec.resources.num_workers == 1 and not _streams(context.spec):
            models, last_metrics, state = _train_in_process(dataset, method, seed, context, tracker, trial_run, step1)
        else:
            models, last_metrics, state = _train_with_trainer(dataset, method, seed, context, trial_run, trial_id, step1)
        step1.publish(models.phases["step1"].checkpoint_state() if "step1" in models.phases else None)
        training_seconds = time.perf_counter() - started

        final = evaluate_trial(
            models,
            dataset,
            probe_max_train_samples=context.spec.eval.probe_max_train_samples,
            seed=seed,
        )
        final["time/training_seconds"] = training_seconds
        final["time/trial_seconds"] = time.perf_counter() - started
        last_epoch = total_epochs(method)
        if not trial_run.final_logged:
            log_metrics(tracker.client, run_id, final, step=last_epoch, tags={FINAL_LOGGED_TAG: "true"})
        _log_model_artifacts(tracker, run_id, models)

        # The run is complete before the final report: Tune may stop the trial inside
        # tune.report (a scheduler reaching max_t raises SystemExit there).
        tracker.finish(run_id, "FINISHED")
        logger.info("trial %s finished: MLflow run %s", trial_id, run_id)
        report = {**last_metrics, **final, "epoch": float(last_epoch)}
        report[CHECKPOINT_SCORE] = checkpoint_score(context.spec, report)
        with tempfile.TemporaryDirectory(prefix="dssl-ckpt-") as folder:
            save_state(state, folder)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
    except BaseException as error:
        # SystemExit comes from Tune stopping the trial (a scheduler decision); the rest are
        # failures. Either way the run must not stay RUNNING.
        stopped = isinstance(error, (SystemExit, KeyboardInterrupt))
        _end_run_after_error(tracker, run_id, "KILLED" if stopped else "FAILED", error, own=not stopped)
        raise
    finally:
        step1.release()


def checkpoint_score(spec: StudySpec, metrics: dict[str, Any]) -> float:
    """Return the value that ranks a checkpoint: the study's search metric, NaN when absent.

    Tune keeps the best ``eval.checkpoints_to_keep`` checkpoints per trial by this value, plus
    the latest when it is not among them. NaN ranks below every number, so checkpoints of epochs that do not report
    the search metric (probe metrics exist only after the final evaluation) go first.
    """
    metric = spec.search.metrics[0]
    value = metrics.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return math.nan


class _Step1Reuse:
    """A trial's part in step-1 reuse (:mod:`dssl.study.step1_cache`): load, or train and publish."""

    def __init__(self, context: TrialContext, tracker: StudyTracker, run_id: str, trial_id: str) -> None:
        self._context = context
        self._tracker = tracker
        self._run_id = run_id
        self._trial_id = trial_id
        self._key: str | None = None
        self._owned = False
        self.pretrained: dict[str, dict[str, Any]] | None = None

    def prepare(self, method: MethodSpec, seed: int) -> None:
        """Look the trial's step-1 model up and log where it comes from as ``step1.*`` params."""
        if not (self._context.spec.tracking.reuse_step1 and reuses_step1(method)):
            return
        self._key = step1_key(self._context.spec, method, seed)
        found = obtain_step1(self._context.step1_coordinator, self._tracker.client, self._key, self._trial_id)
        if found is None:
            self._owned = True
            self._tracker.log_params(self._run_id, {"step1.run_id": self._run_id, "step1.key": self._key})
            return
        state, source_run_id, uri = found
        self.pretrained = {"step1": state}
        self._tracker.log_params(
            self._run_id, {"step1.run_id": source_run_id, "step1.checkpoint_uri": uri, "step1.key": self._key}
        )

    def publish(self, state: dict[str, Any] | None) -> None:
        """Publish the step-1 model this trial trained, once, and let waiting trials go on."""
        if not self._owned or self._key is None or state is None:
            return
        publish_step1(self._tracker.client, self._run_id, self._key, state)
        self.release()

    def release(self) -> None:
        if self._owned and self._key is not None and self._context.step1_coordinator is not None:
            self._context.step1_coordinator.release.remote(self._key, self._trial_id)
        self._owned = False


def _resource_params(spec: StudySpec) -> dict[str, Any]:
    resources = spec.resources
    return {
        "resources.num_workers": resources.num_workers,
        "resources.cpus_per_worker": resources.cpus_per_worker,
        "resources.gpus_per_worker": resources.gpus_per_worker,
        "data.kind": spec.data.kind,
    }


def _end_run_after_error(tracker: StudyTracker, run_id: str, status: str, error: BaseException, own: bool) -> None:
    """Record ``error`` on the run and end it.

    ``own`` marks an error of the trial's own code, which a restart would repeat.
    """
    tags = {ERROR_TAG: f"{type(error).__name__}: {error}"[:4000]}
    if own:
        tags[ERROR_KIND_TAG] = "trial"
    try:
        tracker.set_tags(run_id, tags)
        tracker.finish_if_running(run_id, status)
    except Exception:  # the original error matters more than a tracking failure
        logger.exception("could not mark MLflow run %s as %s", run_id, status)


def _device_for(spec: StudySpec) -> torch.device:
    if spec.resources.gpus_per_worker and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _train_in_process(
    dataset: PairedDataset,
    method: MethodSpec,
    seed: int,
    context: TrialContext,
    tracker: StudyTracker,
    trial_run: TrialRun,
    step1: _Step1Reuse,
) -> tuple[TrainedModels, dict[str, float], TrainingState]:
    """Train in this process; return the models, the latest value of each metric and the final state.

    Epochs that an earlier attempt of the trial already logged (``trial_run.logged_epoch``) are
    trained again from the last checkpoint but not logged twice.
    """
    torch.set_num_threads(max(1, int(context.spec.resources.cpus_per_worker)))
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from = load_state(folder)
        logger.info("trial resumes after epoch %d", resume_from.epoch)
        tracker.set_tags(
            trial_run.run_id,
            {RESTARTS_TAG: str(trial_run.restarts + 1), RESUMED_FROM_TAG: str(resume_from.epoch)},
        )

    last_metrics: dict[str, float] = {}
    final_state: list[TrainingState] = [] if resume_from is None else [resume_from]
    keep_checkpoints = context.spec.eval.checkpoint_every_epoch

    def report(epoch: int, metrics: dict[str, float], state: TrainingState) -> None:
        # The latest value of every metric, step-1 ones included after step 2 has started.
        last_metrics.update(metrics)
        final_state[:] = [state]
        if epoch > trial_run.logged_epoch:
            log_epoch_metrics(tracker.client, trial_run.run_id, metrics, epoch)
        if state.phase == "step1" and epoch == method.step1.epochs:
            # Trials waiting for this step-1 model can start their step 2 now.
            step1.publish(state.models["step1"])
        if not keep_checkpoints and epoch != total_epochs(method):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="dssl-ckpt-") as folder:
            save_state(state, folder)
            scored = {**metrics, CHECKPOINT_SCORE: checkpoint_score(context.spec, metrics)}
            tune.report(scored, checkpoint=tune.Checkpoint.from_directory(folder))

    models = train_trial(
        dataset,
        method,
        seed,
        on_epoch_end=report,
        device=_device_for(context.spec),
        diagnostics_samples=context.spec.eval.diagnostics_samples,
        resume_from=resume_from,
        pretrained=step1.pretrained,
        mi_diagnostics=_mi_diagnostics_settings(context.spec, tune.get_context().get_trial_id()),
    )
    if not final_state:
        raise RuntimeError("training ended without a completed epoch; the method has no epochs to train")
    return models, last_metrics, final_state[0]


def _mi_diagnostics_settings(spec: StudySpec, trial_id: str) -> MIDiagnosticsSettings:
    """Return the per-epoch MI and R² settings of ``spec.eval``.

    The per-epoch ``r2/`` values at the last epoch share their step with the final evaluation's,
    which run_trial logs afterwards, so MLflow keeps the final value as the latest (it orders
    values of one step by timestamp).

    Multi-worker trials pass them to ``dssl.train.worker.train_worker`` as a dict; rank 0
    computes the diagnostics there.
    """
    evaluation = spec.eval
    return MIDiagnosticsSettings(
        every_n_epochs=evaluation.mi_every_n_epochs,
        train_samples=evaluation.mi_train_samples,
        eval_samples=evaluation.mi_eval_samples,
        estimator_steps=evaluation.mi_estimator_steps,
        trial=trial_id,
    )


def _streams(spec: StudySpec) -> bool:
    """Return whether the study streams its training rows through Ray Data (``data.streaming``)."""
    return spec.data.kind == "parquet" and spec.data.streaming


def _worker_data(spec: StudySpec, manifest: str | None, dataset_ref: Any) -> dict[str, Any]:
    """Tell Train workers where their rows come from.

    With Parquet data each worker reads its own shard and the held-out rows its diagnostics use
    (``dssl.train.worker``), so no worker keeps the whole dataset in memory. With streaming the
    shard comes from Ray Data instead, and the worker reads only a training sample for the MI
    diagnostics. Without a manifest the workers get the whole dataset from the object store.
    """
    if manifest is None:
        return {"dataset_ref": dataset_ref}
    held_out = max(spec.eval.diagnostics_samples, spec.eval.mi_eval_samples)
    return {
        "data_view": {
            "manifest": manifest,
            "test_fraction": spec.data.test_fraction,
            "seed": spec.data.seed,
            "held_out_rows": held_out,
            "streaming": _streams(spec),
            "sample_rows": max(spec.eval.mi_train_samples, spec.method.batch_size),
        }
    }


def _train_with_trainer(
    dataset: PairedDataset,
    method: MethodSpec,
    seed: int,
    context: TrialContext,
    trial_run: TrialRun,
    trial_id: str,
    step1: _Step1Reuse,
) -> tuple[TrainedModels, dict[str, float], TrainingState]:
    """Train with a Ray Train worker group; return the models, latest metrics and final state.

    Ray Train restarts the worker group from its latest checkpoint up to
    ``resources.max_failures`` times when a worker dies. The group's run is named after the trial
    in the study folder, so a trial that Tune restarts resumes from that run's checkpoints too.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dssl.study.train_callback import MlflowTuneReportCallback
    from dssl.train.worker import train_worker

    resources = context.spec.resources
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": float(resources.cpus_per_worker)}
    if use_gpu:
        per_worker["GPU"] = float(resources.gpus_per_worker)

    datasets = {}
    if _streams(context.spec):
        from dssl.data.streaming import TRAIN_DATASET, training_rows

        datasets[TRAIN_DATASET] = training_rows(context.spec.data.manifest)

    trainer = TorchTrainer(
        train_worker,
        datasets=datasets or None,
        train_loop_config={
            **_worker_data(context.spec, context.data_manifest, context.dataset_ref),
            "method": method.model_dump(),
            "seed": seed,
            "pretrained_ref": None if step1.pretrained is None else ray.put(step1.pretrained),
            "mi_diagnostics": dataclasses.asdict(_mi_diagnostics_settings(context.spec, trial_id)),
            "diagnostics_samples": context.spec.eval.diagnostics_samples,
            "threads": max(1, int(resources.cpus_per_worker)),
            "search_metric": context.spec.search.metrics[0],
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=f"train-{trial_id}",
            storage_path=StudyStorage(context.storage_path, is_local="://" not in context.storage_path).join("train"),
            callbacks=[MlflowTuneReportCallback(context.tracking_uri, trial_run.run_id, trial_run.logged_epoch)],
            checkpoint_config=CheckpointConfig(
                num_to_keep=context.spec.eval.checkpoints_to_keep,
                checkpoint_score_attribute=CHECKPOINT_SCORE,
                checkpoint_score_order=context.spec.search.modes[0],
            ),
            failure_config=FailureConfig(max_failures=resources.max_failures),
        ),
    )
    result = trainer.fit()
    returned = getattr(result, "return_value", None)
    if isinstance(returned, dict) and NON_FINITE_LOSS_KEY in returned:
        raise NonFiniteLossError(str(returned[NON_FINITE_LOSS_KEY]))
    if result.checkpoint is None:
        raise RuntimeError(f"trial {trial_id}: Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_state(folder)
    if state.epoch != total_epochs(method):
        raise RuntimeError(
            f"trial {trial_id}: Ray Train finished after epoch {state.epoch} of {total_epochs(method)}; "
            "the workers stopped early without an error"
        )
    models = restore_models(state, dataset.x1.shape[1], dataset.x2.shape[1], method)
    # MLflow keeps the latest value of every metric the callback logged, step-1 ones included.
    latest = MlflowClient(tracking_uri=context.tracking_uri).get_run(trial_run.run_id).data.metrics
    return models, {**latest, **(result.metrics or {})}, state


def _log_model_artifacts(tracker: StudyTracker, run_id: str, models: TrainedModels) -> None:
    """Log each phase's final weights as ``checkpoints/<phase>.pt`` (``step1.pt``, ``step2.pt``).

    A phase's file holds only its own weights; the frozen weights of earlier phases are in theirs.
    """
    with tempfile.TemporaryDirectory(prefix="dssl-models-") as folder:
        for name, model in models.phases.items():
            path = Path(folder) / f"{name}.pt"
            torch.save(model.checkpoint_state(), path)
            tracker.log_artifact(run_id, path, artifact_path="checkpoints")