"""Fixed platform cost per trial: a small study through Ray Tune and MLflow versus the same work
run in-process.

For one worker count the benchmark

1. writes a study file: synthetic data, the reference model sizes, a few epochs, a grid with one
   ``step1.beta`` value and one seed per trial, run one trial at a time;
2. times what each trial computes, ``train_trial`` followed by ``evaluate_trial`` with the
   trial's settings and seed, in a fresh Python process on one thread (after one untimed
   warm-up run). A fresh process matches the trial's reused actor process more closely than
   this long-running benchmark process, whose speed after the other parts can differ by 10-20%;
3. runs the study with :func:`dssl.study.runner.run_study`, tracking to a temporary SQLite
   store, and stops Ray afterwards;
4. reads each trial's MLflow child run: its start time (the run is created near the start of
   the trial function) and end time (set after the final report to Tune), both in milliseconds.

Per trial it reports

- ``span_s``: MLflow end minus start of the trial's run;
- ``gap_s``: this run's start minus the previous trial run's end. It covers Tune finishing the
  previous trial, the searcher suggesting the next config, scheduling the trial on a reused or
  new actor, and the trial function's set-up before its MLflow run exists;
- ``cycle_s``: this run's end minus the previous run's end, so ``gap_s + span_s``;
- ``in_process_s``: the same training and evaluation timed outside Ray (step 2 above);
- ``overhead_s``: ``cycle_s - in_process_s``, the platform's cost per trial.

The first trial has no previous trial: its start-up is part of ``startup_s`` (from the
``run_study`` call to the first trial run's start), and its own ``overhead_s`` is
``span_s - in_process_s``. The median per-trial overhead is taken over the later trials.

Each span is also split into three phases: run start to first epoch, first to last epoch, and
last epoch to run end (evaluation, artifacts, final report). The trial is split at the MLflow
timestamps of its first and last ``epoch`` metric, which are logged when an epoch's report
reaches the trial driver. The in-process run is split at the matching ``on_epoch_end`` calls.
Each phase's difference shows where the overhead arises.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from threadpoolctl import threadpool_limits

from benchmarks.throughput import paper_method
from dssl.eval.evaluate import evaluate_trial
from dssl.study.schema import StudySpec, load_study, resolve_method
from dssl.train.loop import train_trial

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parent.parent
SEARCH_METRIC = "probe/shared/y_c"


def study_document(
    name: str,
    num_workers: int,
    trials: int,
    n_samples: int,
    step1_epochs: int,
    step2_epochs: int,
) -> dict[str, Any]:
    """Return the study file (as a mapping) of one overhead measurement.

    Args:
        name: Study name.
        num_workers: Data-parallel workers per trial (1 trains in the trial's own process).
        trials: Number of sequential trials; trial ``i`` uses seed ``i``.
        n_samples: Synthetic rows (80% train).
        step1_epochs: Epochs of step 1.
        step2_epochs: Epochs of step 2.

    Returns:
        A mapping that :func:`dssl.study.schema.load_study` accepts once written as YAML.
    """
    if trials < 2:
        raise ValueError(f"trials must be at least 2 so that a trial follows another, got {trials}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    return {
        "name": name,
        "description": "dssl benchmark: fixed platform cost per trial",
        "data": {"kind": "synthetic", "seed": 0, "test_fraction": 0.2, "n_samples": n_samples},
        "method": _benchmark_method(step1_epochs, step2_epochs),
        "search": {
            "algorithm": "grid",
            "metric": SEARCH_METRIC,
            "mode": "max",
            "max_concurrent": 1,
            "seeds": list(range(trials)),
            "sampler_seed": 0,
            "scheduler": "none",
            "space": {"step1.beta": {"type": "grid", "values": [0.1]}},
        },
        "resources": {"num_workers": num_workers, "cpus_per_worker": 1, "gpus_per_worker": 0},
        # The fitted per-epoch MI estimators are training work, not platform cost, and
        # time_in_process runs without them, so the study turns them off too.
        "eval": {
            "probe_max_train_samples": 2000,
            "diagnostics_samples": 512,
            "checkpoint_every_epoch": True,
            "mi_every_n_epochs": None,
        },
    }


def _benchmark_method(step1_epochs: int, step2_epochs: int) -> dict[str, Any]:
    """Return the paper configuration as study YAML, with lr 1e-3 so short runs learn."""
    method = paper_method(step1_epochs, step2_epochs).model_dump(by_alias=True)
    method["step1"]["lr"] = 1.0e-3
    method["step2"]["lr"] = 1.0e-3
    return method


def write_study(path: Path, document: dict[str, Any]) -> StudySpec:
    """Write ``document`` as YAML to ``path`` and return it validated."""
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_study(path)


PHASES = ("start_to_first_epoch", "first_to_last_epoch", "last_epoch_to_end")


def time_in_process(spec: StudySpec, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Time each seed's training and evaluation in this process, as one trial runs them.

    One untimed run of the first seed comes first, so that lazy initialisation is not counted.
    Torch and the BLAS and OpenMP pools of NumPy and scikit-learn are limited to the trial's CPU
    count, as Ray limits a trial's process by setting ``OMP_NUM_THREADS``. With more threads
    than cores the probe fits run several times slower on a loaded machine.

    Args:
        spec: The study; its data, method and eval settings are used.
        seeds: Training seeds to time.

    Returns:
        Per seed: ``total_s`` and the seconds of each of :data:`PHASES`, split at the
        ``on_epoch_end`` calls of the first and the last epoch.
    """
    from dssl.study.runner import build_dataset

    threads = max(1, int(spec.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    dataset = build_dataset(spec)
    method = resolve_method(spec, {})

    def one_trial(seed: int) -> dict[str, float]:
        epoch_ends: list[float] = []
        started = time.perf_counter()
        models = train_trial(
            dataset,
            method,
            seed,
            on_epoch_end=lambda epoch, metrics, state: epoch_ends.append(time.perf_counter()),
            diagnostics_samples=spec.eval.diagnostics_samples,
        )
        evaluate_trial(models, dataset, probe_max_train_samples=spec.eval.probe_max_train_samples, seed=seed)
        finished = time.perf_counter()
        return {
            "total_s": finished - started,
            "start_to_first_epoch": epoch_ends[0] - started,
            "first_to_last_epoch": epoch_ends[-1] - epoch_ends[0],
            "last_epoch_to_end": finished - epoch_ends[-1],
        }

    timings: dict[int, dict[str, float]] = {}
    with threadpool_limits(limits=threads):
        one_trial(seeds[0])
        for seed in seeds:
            timings[seed] = one_trial(seed)
    return timings


_RESULT_PREFIX = "IN_PROCESS_RESULT "


def time_in_fresh_process(
    study_path: Path, seeds: list[int], timeout_s: float = 1800.0
) -> dict[int, dict[str, float]]:
    """Run :func:`time_in_process` in a new Python process and return its timings.

    The child gets ``OMP_NUM_THREADS`` set to the trial's CPU count, as Ray sets it for a
    trial's actor, and inherits nothing else from this process but its environment.

    Args:
        study_path: The study file written by :func:`write_study`.
        seeds: Training seeds to time.
        timeout_s: Seconds after which the child is stopped.

    Returns:
        The child's :func:`time_in_process` result.

    Raises:
        RuntimeError: If the child fails or prints no result.
    """
    spec = load_study(study_path)
    threads = str(max(1, int(spec.resources.cpus_per_worker)))
    # Run as a module from the repository root, so that the child imports the benchmarks package.
    command = [sys.executable, "-m", "benchmarks.overhead", str(study_path), *map(str, seeds)]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "OMP_NUM_THREADS": threads},
        cwd=_REPO_ROOT,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            payload = json.loads(line[len(_RESULT_PREFIX) :])
            return {int(seed): value for seed, value in payload.items()}
    raise RuntimeError(
        f"in-process timing child exited with {completed.returncode} and no result; stderr tail:\n"
        f"{completed.stderr[-2000:]}"
    )


def _trial_runs(tracking_uri: str, experiment_name: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Return the study's trial runs, sorted by start time.

    Each row contains the seed, the status, and the start, end, first-epoch and last-epoch
    times in Unix seconds (from MLflow's millisecond timestamps).
    """
    from mlflow import MlflowClient

    from dssl.study.tracking import STUDY_RUN_TAG

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise RuntimeError(f"MLflow experiment {experiment_name!r} not found at {tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{STUDY_RUN_TAG}` = '{parent_run_id}'", max_results=1000
    )
    rows = []
    for run in runs:
        if run.info.run_id == parent_run_id:
            continue
        epochs = sorted(client.get_metric_history(run.info.run_id, "epoch"), key=lambda metric: metric.step)
        if not epochs:
            raise RuntimeError(f"trial run {run.info.run_id} logged no 'epoch' metric")
        rows.append(
            {
                "seed": int(run.data.params["seed"]),
                "status": run.info.status,
                "start": run.info.start_time / 1000.0,
                "end": (run.info.end_time or 0) / 1000.0,
                "first_epoch": epochs[0].timestamp / 1000.0,
                "last_epoch": epochs[-1].timestamp / 1000.0,
            }
        )
    return sorted(rows, key=lambda row: row["start"])


def _phase_rows(run: dict[str, Any], in_process: dict[str, float]) -> dict[str, dict[str, float]]:
    """Compare the trial's three phases with the in-process ones (seconds)."""
    trial = {
        "start_to_first_epoch": run["first_epoch"] - run["start"],
        "first_to_last_epoch": run["last_epoch"] - run["first_epoch"],
        "last_epoch_to_end": run["end"] - run["last_epoch"],
    }
    return {
        phase: {
            "trial_s": trial[phase],
            "in_process_s": in_process[phase],
            "difference_s": trial[phase] - in_process[phase],
        }
        for phase in PHASES
    }


def run_overhead_study(
    work_dir: Path,
    num_workers: int,
    trials: int,
    in_process: dict[int, dict[str, float]] | None = None,
    n_samples: int = 6000,
    step1_epochs: int = 3,
    step2_epochs: int = 2,
) -> dict[str, Any]:
    """Run one small study and compare each trial with the same work run in-process.

    Ray is started by ``run_study`` and stopped here before returning. ``RAY_ADDRESS`` is
    removed from the environment so that a fresh local Ray is measured.

    Args:
        work_dir: Empty folder for the study file, the MLflow store and Tune's results.
        num_workers: Data-parallel workers per trial.
        trials: Sequential trials, at least 2.
        in_process: In-process timings per seed (see :func:`time_in_process`) from an earlier
            call with the same data, method and eval settings; measured here when ``None``.
        n_samples: Synthetic rows.
        step1_epochs: Epochs of step 1.
        step2_epochs: Epochs of step 2.

    Returns:
        ``trials`` (the per-trial rows described in the module docstring),
        ``median_overhead_s`` and its min and max over trials 2..n, ``startup_s``,
        the median per phase difference, ``startup_s``, ``teardown_s``, ``ray_shutdown_s``,
        ``study_seconds``, ``in_process`` and ``settings``.
    """
    import ray

    from dssl.study.runner import run_study

    work_dir.mkdir(parents=True, exist_ok=True)
    study_path = work_dir / "study.yaml"
    name = f"bench-overhead-{num_workers}w"
    document = study_document(name, num_workers, trials, n_samples, step1_epochs, step2_epochs)
    spec = write_study(study_path, document)
    seeds = list(range(trials))
    if in_process is None:
        in_process = time_in_fresh_process(study_path, seeds)

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tracking_uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    if ray.is_initialized():
        ray.shutdown()
    called = time.time()
    try:
        outcome = run_study(study_path, tracking_uri=tracking_uri, storage_path=work_dir / "results")
        returned = time.time()
    finally:
        shutdown_started = time.perf_counter()
        ray.shutdown()
        ray_shutdown_s = time.perf_counter() - shutdown_started
    if outcome.errors:
        raise RuntimeError(f"{outcome.errors} of {outcome.trials} benchmark trials failed; see {outcome.results_path}")

    runs = _trial_runs(outcome.tracking_uri, outcome.experiment_name, outcome.parent_run_id)
    if len(runs) != trials or any(run["status"] != "FINISHED" for run in runs):
        raise RuntimeError(f"expected {trials} FINISHED trial runs, got {[(r['seed'], r['status']) for r in runs]}")

    rows = []
    for index, run in enumerate(runs):
        baseline = in_process[run["seed"]]
        span = run["end"] - run["start"]
        row: dict[str, Any] = {"seed": run["seed"], "span_s": span, "in_process_s": baseline["total_s"]}
        if index == 0:
            row.update({"gap_s": None, "cycle_s": None, "overhead_s": span - baseline["total_s"]})
        else:
            previous_end = runs[index - 1]["end"]
            cycle = run["end"] - previous_end
            row.update(
                {"gap_s": run["start"] - previous_end, "cycle_s": cycle, "overhead_s": cycle - baseline["total_s"]}
            )
        row["phases"] = _phase_rows(run, baseline)
        rows.append(row)

    later = rows[1:]
    overheads = [row["overhead_s"] for row in later]
    return {
        "num_workers": num_workers,
        "trials": rows,
        "median_overhead_s": statistics.median(overheads),
        "min_overhead_s": min(overheads),
        "max_overhead_s": max(overheads),
        "median_gap_s": statistics.median(row["gap_s"] for row in later),
        "median_phase_difference_s": {
            phase: statistics.median(row["phases"][phase]["difference_s"] for row in later) for phase in PHASES
        },
        "startup_s": runs[0]["start"] - called,
        "teardown_s": returned - runs[-1]["end"],
        "ray_shutdown_s": ray_shutdown_s,
        "study_seconds": returned - called,
        "in_process": {str(seed): value for seed, value in in_process.items()},
        "settings": {
            "n_samples": n_samples,
            "step1_epochs": step1_epochs,
            "step2_epochs": step2_epochs,
            "trials": trials,
            "probe_max_train_samples": 2000,
            "diagnostics_samples": 512,
            "checkpoint_every_epoch": True,
        },
    }


if __name__ == "__main__":
    if str(_REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(_REPO_ROOT))
    timings = time_in_process(load_study(sys.argv[1]), [int(seed) for seed in sys.argv[2:]])
    sys.stdout.write(_RESULT_PREFIX + json.dumps(timings) + "\n")
