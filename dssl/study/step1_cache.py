"""Reuse of trained step-1 models across step-2 trials and across studies.

Step 2 of DisentangledSSL freezes the step-1 model, so every trial that differs from another
only in step-2 settings (lambda, the overlap penalty, step-2 epochs) can start from the same
step-1 model. A trial's *step-1 key* hashes everything that determines that model. That is the
data section of the study (with the size and modification time of a Parquet dataset's files),
the method settings outside ``step2`` and the other methods' sections, the seed, and the number
of data-parallel workers, because each worker trains on its own shard.

The MLflow tracking store is the catalogue. The run that trains a step-1 model logs it as the
artifact ``checkpoints/step1.pt`` and then sets the tag ``dssl.step1_key``. A later trial with
the same key, in the same study or in another one on the same tracking server, downloads that
file and records the producing run as ``step1.run_id`` and ``step1.checkpoint_uri`` params.

Within one study, trials with the same key can start at the same time. A
:class:`Step1Coordinator` actor lets the first of them train and the others wait until its
step-1 model is logged. When the training trial fails before that, the next waiter trains.

A reusing trial reports none of step 1's per-epoch metrics, so the schema rejects a search or
ASHA metric that only step 1 reports while ``tracking.reuse_step1`` is true.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

if TYPE_CHECKING:
    from dssl.study.schema import MethodSpec, StudySpec

logger = logging.getLogger(__name__)

STEP1_KEY_TAG = "dssl.step1_key"
STEP1_ARTIFACT = "checkpoints/step1.pt"
# Method sections that never influence the step-1 model.
_NOT_STEP1_SECTIONS = ("step2", "joint_opt", "focal", "dmvae")
# Version of the key recipe; bump it when the step-1 training changes incompatibly.
_KEY_VERSION = 2


def step1_key(spec: StudySpec, method: MethodSpec, seed: int) -> str:
    """Return the hex SHA-256 of everything that determines a trial's step-1 model.

    Args:
        spec: The study (its data section and worker count are part of the key).
        method: The trial's resolved method settings.
        seed: The trial's training seed.

    Example:
        >>> from dssl.study.schema import validate_study
        >>> spec = validate_study({"name": "k", "search": {"metric": "probe/shared/y_c", "num_trials": 1}})
        >>> other = spec.method.model_copy(update={"step2": spec.method.step2.model_copy(update={"lam": 9.0})})
        >>> step1_key(spec, spec.method, 0) == step1_key(spec, other, 0)
        True
    """
    method_settings = {
        key: value for key, value in method.model_dump(mode="json").items() if key not in _NOT_STEP1_SECTIONS
    }
    payload = {
        "version": _KEY_VERSION,
        "data": spec.data.model_dump(mode="json"),
        "data_files": _data_file_stamps(spec),
        "method": method_settings,
        "seed": int(seed),
        "num_workers": spec.resources.num_workers,
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _data_file_stamps(spec: StudySpec) -> list[list[Any]]:
    """Return the size and modification time of the manifest and each data file of a Parquet dataset.

    The ``data`` section names a manifest by path only. Rewriting the files at that path (for
    example with ``dssl data ... --overwrite``) changes their stamps and so the step-1 key, and
    a later study trains a new step-1 model instead of loading one trained on the old rows.
    Built-in datasets are fully described by the ``data`` section and have no stamps.
    """
    if spec.data.kind != "parquet":
        return []
    from dssl.data.manifest import load_manifest

    manifest_path = Path(spec.data.manifest)
    paths = [manifest_path, *load_manifest(manifest_path).file_paths()]
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append([str(path), stat.st_size, stat.st_mtime_ns])
    return stamps


def find_step1_run(client: MlflowClient, key: str) -> str | None:
    """Return the id of the oldest run on the tracking server that logged the step-1 model ``key``.

    The oldest, so that every later lookup, a resumed trial's included, returns the same run.
    """
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`{STEP1_KEY_TAG}` = '{key}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def load_step1_state(client: MlflowClient, run_id: str) -> tuple[dict[str, Any], str]:
    """Download the step-1 checkpoint of ``run_id`` and return its state dict and artifact URI."""
    run = client.get_run(run_id)
    uri = f"{run.info.artifact_uri.rstrip('/')}/{STEP1_ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="dssl-step1-") as folder:
        path = download_artifacts(
            run_id=run_id, artifact_path=STEP1_ARTIFACT, dst_path=folder, tracking_uri=client.tracking_uri
        )
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state, uri


def publish_step1(client: MlflowClient, run_id: str, key: str, state: dict[str, Any]) -> None:
    """Log a step-1 state as ``checkpoints/step1.pt`` of ``run_id``, then tag the run with ``key``.

    The tag comes last, so a run that carries it always has the file.
    """
    with tempfile.TemporaryDirectory(prefix="dssl-step1-") as folder:
        path = Path(folder) / "step1.pt"
        torch.save(state, path)
        client.log_artifact(run_id, str(path), artifact_path="checkpoints")
    client.set_tag(run_id, STEP1_KEY_TAG, key)
    logger.info("run %s published step-1 model %s", run_id, key[:12])


@ray.remote(num_cpus=0)
class Step1Coordinator:
    """Decides, per step-1 key, which trial of a study trains the step-1 model.

    ``claim`` returns True for the first caller of a key, which then trains, and False while
    another trial owns the key. Those callers ``wait`` until the owner calls ``release``, then
    look the model up in MLflow and claim again if it is missing.
    """

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}
        self._released: dict[str, asyncio.Event] = {}

    async def claim(self, key: str, trial_id: str) -> bool:
        if key in self._owners:
            return False
        self._owners[key] = trial_id
        self._released[key] = asyncio.Event()
        return True

    async def wait(self, key: str) -> None:
        event = self._released.get(key)
        if event is not None:
            await event.wait()

    async def release(self, key: str, trial_id: str) -> None:
        if self._owners.get(key) != trial_id:
            return
        del self._owners[key]
        self._released.pop(key).set()


def obtain_step1(
    coordinator: Any | None, client: MlflowClient, key: str, trial_id: str
) -> tuple[dict[str, Any], str, str] | None:
    """Return ``(state, run_id, checkpoint_uri)`` of an existing step-1 model, or None to train it.

    A None return means this trial owns the key and must call the coordinator's ``release``
    when its step-1 model is published or the trial ends.
    """
    while True:
        run_id = find_step1_run(client, key)
        if run_id is not None:
            state, uri = load_step1_state(client, run_id)
            logger.info("trial %s reuses the step-1 model of run %s", trial_id, run_id)
            return state, run_id, uri
        if coordinator is None or ray.get(coordinator.claim.remote(key, trial_id)):
            return None
        logger.info("trial %s waits for another trial's step-1 model %s", trial_id, key[:12])
        ray.get(coordinator.wait.remote(key))
