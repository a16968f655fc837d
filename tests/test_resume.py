"""Studies survive a killed driver (`dssl resume`) and trials survive a killed process or worker.

Each study runs as a `dssl` subprocess with its own local Ray, so that the test can kill the
driver or a trial's process without touching the pytest session's Ray. That Ray has its own
temporary folder and a marker variable (:mod:`ray_processes`), by which the test finds the trial
processes and, after a driver kill, any Ray process the driver left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from ray_processes import MARKER_ENV, kill_cluster

from dssl.train.checkpoint import load_state

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STEP1_EPOCHS = 6
STEP2_EPOCHS = 3
EPOCHS = STEP1_EPOCHS + STEP2_EPOCHS


def _study(name: str, *, num_trials: int, num_workers: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"kind": "synthetic", "seed": 0, "n_samples": 6000, "test_fraction": 0.2},
        "method": {
            "hidden_dim": 64,
            "embed_dim": 8,
            "batch_size": 64,
            "step1": {"epochs": STEP1_EPOCHS, "lr": 1.0e-3},
            "step2": {"epochs": STEP2_EPOCHS, "lr": 1.0e-3},
        },
        "search": {
            "algorithm": "tpe",
            "metric": "probe/shared/y_c",
            "num_trials": num_trials,
            "max_concurrent": 1,
            "sampler_seed": 0,
            "space": {"step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 10.0}},
        },
        "resources": {"num_workers": num_workers, "cpus_per_worker": 1, "max_failures": 2},
        "eval": {
            "diagnostics_samples": 256,
            "probe_max_train_samples": 1000,
            "mi_every_n_epochs": None,
            "checkpoint_every_epoch": True,
        },
        "tracking": {"reuse_step1": False},
    }


class _Study:
    """A `dssl` subprocess whose Ray processes carry a marker, with its output in a file."""

    def __init__(self, tmp_path: Path, args: list[str], label: str) -> None:
        self.marker = uuid.uuid4().hex
        # Unix socket paths are limited to 107 bytes, so the session folder gets a short path.
        self.ray_dir = Path(tempfile.mkdtemp(prefix="dssl-ray-", dir="/tmp"))
        self.log_path = tmp_path / f"{label}.log"
        self._log = open(self.log_path, "w")
        env = {**os.environ, "RAY_TMPDIR": str(self.ray_dir), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        # Ray's renamed processes keep the end of their environment readable, so the marker goes last.
        env[MARKER_ENV] = self.marker
        self.process = subprocess.Popen(
            [str(BIN / "dssl"), *args], stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def pids(self, title: str | None = None) -> list[int]:
        """Return the live processes of this study's Ray, optionally those whose title has ``title``."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{MARKER_ENV}={self.marker}".encode() in environ and (title is None or title in cmdline):
                found.append(int(entry.name))
        return found

    def kill_all(self) -> None:
        kill_cluster(self.marker, self.ray_dir)
        shutil.rmtree(self.ray_dir, ignore_errors=True)


@pytest.fixture
def studies() -> Iterator[list[_Study]]:
    started: list[_Study] = []
    yield started
    for study in started:
        if study.process.poll() is None:
            study.process.kill()
        study.kill_all()


def _wait_for(condition: Callable[[], Any], timeout_s: float, description: str, study: _Study) -> Any:
    """Poll ``condition`` until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if study.process.poll() is not None:
            code = study.process.returncode
            raise AssertionError(f"the study exited ({code}) before {description}:\n{study.output()[-4000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {description}:\n{study.output()[-4000:]}")


def _child_runs(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def _logged_epoch(run: Any) -> int:
    return int(run.data.tags.get("dssl.logged_epoch", 0))


def _assert_every_epoch_once(client: MlflowClient, run: Any) -> None:
    """Each per-epoch metric has one value per epoch, and the final metrics have one value."""
    run_id = run.info.run_id
    step1 = [m.step for m in client.get_metric_history(run_id, "step1/train/loss")]
    step2 = [m.step for m in client.get_metric_history(run_id, "step2/train/loss")]
    assert sorted(step1) == list(range(1, STEP1_EPOCHS + 1)), f"run {run_id}: step-1 epochs {sorted(step1)}"
    assert sorted(step2) == list(range(STEP1_EPOCHS + 1, EPOCHS + 1)), f"run {run_id}: step-2 epochs {sorted(step2)}"
    final = client.get_metric_history(run_id, "probe/shared/y_c")
    assert [m.step for m in final] == [EPOCHS], f"run {run_id}: final probe logged at {[m.step for m in final]}"


def test_resume_after_driver_sigkill(tmp_path: Path, studies: list[_Study]) -> None:
    # One trial finishes, one is killed mid-way, and one runs only after the resume.
    num_trials = 3
    study_file = tmp_path / "resume-check.yaml"
    study_file.write_text(yaml.safe_dump(_study("resume-check", num_trials=num_trials)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results"
    client = MlflowClient(tracking_uri=uri)

    first = _Study(tmp_path, ["run", str(study_file), "--tracking-uri", uri, "--storage-path", str(results)], "run")
    studies.append(first)

    def one_done_one_midway() -> list[Any] | None:
        runs = _child_runs(client, "resume-check")
        finished = [run for run in runs if run.info.status == "FINISHED"]
        midway = [run for run in runs if run.info.status == "RUNNING" and 2 <= _logged_epoch(run) < EPOCHS]
        return runs if finished and midway else None

    before = _wait_for(one_done_one_midway, 600, "one finished trial and one trial past epoch 2", first)
    first.process.send_signal(signal.SIGKILL)
    first.wait(60)
    # The driver's Ray would stop on its own once it notices; a lost head node leaves nothing.
    first.kill_all()
    killed_midway = next(run for run in before if run.info.status == "RUNNING")
    assert first.process.returncode == -signal.SIGKILL

    (study_dir,) = [path for path in results.iterdir() if path.is_dir()]
    assert (study_dir / "dssl_study.json").is_file()
    resumed = _Study(tmp_path, ["resume", str(study_dir), "--tracking-uri", uri], "resume")
    studies.append(resumed)
    code = resumed.wait(900)
    assert code == 0, resumed.output()[-6000:]

    runs = _child_runs(client, "resume-check")
    trial_ids = [run.data.tags["dssl.trial_id"] for run in runs]
    assert len(runs) == num_trials, f"expected {num_trials} child runs, got {trial_ids}"
    assert len(set(trial_ids)) == num_trials
    assert {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        _assert_every_epoch_once(client, run)
    # The trial that was running when the driver died continued its own run.
    assert killed_midway.info.run_id in {run.info.run_id for run in runs}

    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dssl.resumed"] == "1"
    assert parent.data.metrics["trials/total"] == num_trials
    assert parent.data.metrics["trials/failed"] == 0

    # The Optuna study kept every trial: one complete trial per Tune trial, none left running,
    # and the sampled betas are the ones the MLflow runs trained with.
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == num_trials
    assert not [trial for trial in trials if trial.state == optuna.trial.TrialState.RUNNING]
    assert len(trials) <= num_trials + 1, "at most one trial asked for but never started by Tune"
    optuna_betas = sorted(round(trial.params["step1.beta"], 12) for trial in complete)
    mlflow_betas = sorted(round(float(run.data.params["step1.beta"]), 12) for run in runs)
    assert optuna_betas == mlflow_betas
    for trial in complete:
        assert trial.value == pytest.approx(
            next(r for r in runs if abs(float(r.data.params["step1.beta"]) - trial.params["step1.beta"]) < 1e-12).data.metrics["probe/shared/y_c"]
        )

    # Resuming a finished study is refused with a clear message and changes nothing.
    again = subprocess.run(
        [str(BIN / "dssl"), "resume", str(study_dir), "--tracking-uri", uri],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 2
    assert "already finished" in again.stderr
    assert len(_child_runs(client, "resume-check")) == num_trials


def test_resume_rejects_plain_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "dssl"), "resume", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "dssl_study.json" in result.stderr
    assert str(tmp_path) in result.stderr


@pytest.mark.parametrize(
    ("num_workers", "process_title"),
    [(1, "ray::ImplicitFunc"), (2, "ray::RayTrainWorker")],
    ids=["trial-process", "train-worker"],
)
def test_killed_process_resumes_from_checkpoint(
    tmp_path: Path, studies: list[_Study], num_workers: int, process_title: str
) -> None:
    """A killed process costs the trial only the epochs since its last checkpoint.

    A one-worker trial runs in Tune's trial process, and Tune restarts it from the trial's
    checkpoint. Ray Train restarts a two-worker trial's worker group from the group's checkpoint.
    """
    name = f"kill-{num_workers}w"
    study_file = tmp_path / f"{name}.yaml"
    study_file.write_text(yaml.safe_dump(_study(name, num_trials=1, num_workers=num_workers)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    study = _Study(tmp_path, ["run", str(study_file), "--tracking-uri", uri, "--storage-path", str(tmp_path / "r")], "run")
    studies.append(study)

    def midway() -> list[Any] | None:
        runs = [run for run in _child_runs(client, name) if 2 <= _logged_epoch(run) < EPOCHS - 1]
        return runs if runs and study.pids(process_title) else None

    (before,) = _wait_for(midway, 600, "the trial past epoch 2", study)
    victims = study.pids(process_title)
    os.kill(victims[-1], signal.SIGKILL)

    code = study.wait(900)
    output = study.output()
    assert code == 0, output[-6000:]
    (run,) = _child_runs(client, name)
    assert run.info.run_id == before.info.run_id
    assert run.info.status == "FINISHED"
    _assert_every_epoch_once(client, run)
    # Tune and Ray Train keep the eval.checkpoints_to_keep (2) best checkpoints per trial, plus
    # the latest when it is not among them, because restarts need it. The final one is kept.
    pattern = "*/run_trial_*/checkpoint_*" if num_workers == 1 else "*/train/train-*/checkpoint_*"
    kept = sorted(path for path in (tmp_path / "r").glob(pattern) if path.is_dir())
    assert 1 <= len(kept) <= 3, kept
    assert EPOCHS in {load_state(folder).epoch for folder in kept}
    if num_workers == 1:
        assert run.data.tags["dssl.restarts"] == "1", output[-6000:]
        assert _logged_epoch(before) - 1 <= int(run.data.tags["dssl.resumed_from_epoch"]) < EPOCHS
    else:
        assert run.data.tags["dssl.worker_group_failures"] == "1", output[-6000:]
        assert "rank" in run.data.tags["dssl.worker_error"]


def test_resume_rejects_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "absent-study"
    result = subprocess.run(
        [str(BIN / "dssl"), "resume", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"study folder {missing} not found" in result.stderr
