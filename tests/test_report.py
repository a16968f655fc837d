"""Study reports from a crafted MLflow SQLite store that follows the runs ``dssl run`` writes.

The store contains three studies, written with dssl's own tracking helpers (``StudyTracker``,
``flatten_params``, ``dump_resolved_yaml``, the trial driver's resource parameters):

- ``grid``: synthetic data, beta {0, 0.01, 1, 100} x lambda {0, 10} x seeds {0, 1}, single
  objective; one trial FAILED before its final metrics.
- ``pareto``: synthetic data, beta fixed, lambda varied, objectives
  [probe/specific1/y_1 (max), probe/specific1/y_c (min)].
- ``digits``: digits data, step 2 off, beta varied, no study.yaml artifact (objectives from the
  parent run's parameters).

Metric values are closed-form functions of the settings, so the tests can recompute every mean.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from dssl.cli import main
from dssl.study import report
from dssl.study.report import (
    FIGURE_4A,
    FIGURE_4B,
    INFORMATION_PLANE,
    PARETO_FRONT,
    ReportInputError,
    build_report,
    pareto_mask,
)
from dssl.study.runner import _num_trials, _report_study
from dssl.study.schema import StudySpec, dump_resolved_yaml, flatten_params, resolve_method, validate_study
from dssl.study.tracking import StudyTracker
from dssl.study.trial import _resource_params

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID_BETAS = (0.0, 0.01, 1.0, 100.0)
GRID_LAMBDAS = (0.0, 10.0)
SEEDS = (0, 1)
FAILED_SETTING = (100.0, 10.0, 1)
FAILED_ERROR = "OSError: [Errno 28] No space left on device"
STEP1_EPOCHS = 2
STEP2_EPOCHS = 1
# (lambda, accuracy on y_1, accuracy on y_c) of the pareto study; lambda 1 and 3 are dominated.
PARETO_TRIALS = ((0.0, 0.74, 0.67), (1.0, 0.70, 0.68), (2.0, 0.72, 0.60), (3.0, 0.69, 0.61), (4.0, 0.66, 0.55))


def _shared_accuracy(label: str, beta: float, seed: int) -> float:
    base = {"y_c": 0.78, "y_1": 0.67, "y_2": 0.68}[label]
    return round(base - 0.02 * GRID_BETAS.index(beta) + 0.01 * seed, 6)


def _specific_accuracy(label: str, beta: float, lam: float, seed: int) -> float:
    base = {"y_1": 0.74, "y_c": 0.66, "y_2": 0.50}[label]
    return round(base - 0.004 * lam - 0.001 * GRID_BETAS.index(beta) + 0.002 * seed, 6)


def _mi_bounds(beta: float, seed: int) -> tuple[float, float]:
    """Return (lower bound on I(Z; X2), upper bound on I(Z; X1 | X2)), nats."""
    index = GRID_BETAS.index(beta) if beta in GRID_BETAS else 0
    return 5.0 - 0.5 * index + 0.1 * seed, 3.0 / (1 + index) + 0.05 * seed


def _study(name: str, data: Mapping[str, Any], search: Mapping[str, Any], step2: bool = True) -> StudySpec:
    study = {
        "name": name,
        "data": dict(data),
        "method": {
            "step1": {"beta": 0.1, "epochs": STEP1_EPOCHS},
            "step2": {"enabled": step2, "lambda": 1.0, "epochs": STEP2_EPOCHS},
        },
        "search": dict(search),
    }
    return validate_study(study)


class _StudyWriter:
    """Write a parent run and child runs the way ``run_study`` and ``run_trial`` do."""

    def __init__(self, uri: str, spec: StudySpec, log_study_yaml: bool = True) -> None:
        self.spec = spec
        self.tracker = StudyTracker(uri, spec.tracking.experiment or spec.name)
        self.parent_run_id = self.tracker.start_study_run(
            f"{spec.name}-20261204-120000",
            params={
                "study.name": spec.name,
                "search.algorithm": spec.search.algorithm,
                "search.metric": spec.search.metric,
                "search.mode": spec.search.mode,
                "search.num_trials": _num_trials(spec),
                "search.max_concurrent": spec.search.max_concurrent,
                "search.seeds": spec.search.seeds,
                "resources.num_workers": spec.resources.num_workers,
                "data.kind": spec.data.kind,
            },
            tags={
                "dssl.kind": "study",
                "dssl.study_file": f"{spec.name}.yaml",
                "dssl.optuna_storage": "sqlite:///optuna.db",
            },
        )
        if log_study_yaml:
            self.tracker.log_text(self.parent_run_id, dump_resolved_yaml(self.spec), "study.yaml")
        self.count = 0

    def trial(
        self,
        overrides: Mapping[str, Any],
        seed: int,
        step1: Mapping[str, float],
        final: Mapping[str, float] | None,
        status: str = "FINISHED",
        error: str = "",
    ) -> str:
        """Log one trial: step-1 epochs (``step1`` at the last one), the final metrics, the end status."""
        trial_id = f"t{self.count:03d}"
        self.count += 1
        method = resolve_method(self.spec, overrides)
        params = {**flatten_params(method), "seed": seed, "trial_id": trial_id, **_resource_params(self.spec)}
        run_id = self.tracker.start_trial_run(self.parent_run_id, trial_id, f"run_trial_{trial_id}", params).run_id
        for epoch in range(1, STEP1_EPOCHS + 1):
            # The earlier epoch logs other values, so the report must read the latest one.
            scale = 1.0 if epoch == STEP1_EPOCHS else 0.5
            metrics = {name: value * scale for name, value in step1.items()} | {"epoch": epoch, "step": 1}
            self.tracker.log_metrics(run_id, metrics, step=epoch)
        if final is not None:
            self.tracker.log_metrics(run_id, final, step=STEP1_EPOCHS + STEP2_EPOCHS)
        if error:
            self.tracker.set_tags(run_id, {"dssl.error": error})
        self.tracker.finish(run_id, status)
        return run_id

    def finish(self) -> None:
        self.tracker.finish(self.parent_run_id, "FINISHED")


def _grid_final(beta: float, lam: float, seed: int) -> dict[str, float]:
    final = {f"probe/shared/{label}": _shared_accuracy(label, beta, seed) for label in ("y_c", "y_1", "y_2")}
    final |= {f"probe/specific1/{label}": _specific_accuracy(label, beta, lam, seed) for label in ("y_c", "y_1", "y_2")}
    final |= {"r2/shared/z_s": 0.9, "time/training_seconds": 10.0 + seed, "time/trial_seconds": 12.0 + seed}
    return final


def _write_grid_study(uri: str) -> str:
    spec = _study(
        "grid",
        {"kind": "synthetic", "n_samples": 2000},
        {
            "algorithm": "grid",
            "metric": "probe/shared/y_c",
            "mode": "max",
            "seeds": list(SEEDS),
            "space": {
                "step1.beta": {"type": "grid", "values": list(GRID_BETAS)},
                "step2.lambda": {"type": "grid", "values": list(GRID_LAMBDAS)},
            },
        },
    )
    writer = _StudyWriter(uri, spec)
    for beta in GRID_BETAS:
        for lam in GRID_LAMBDAS:
            for seed in SEEDS:
                lower, upper = _mi_bounds(beta, seed)
                step1 = {"mi/shared_infonce_lower_bound": lower, "mi/cmi_upper_bound_kl": upper}
                overrides = {"step1.beta": beta, "step2.lambda": lam}
                if (beta, lam, seed) == FAILED_SETTING:
                    # It failed after its final metrics (e.g. while saving weights), with values
                    # that would move every mean it entered.
                    final = {name: 0.0 for name in _grid_final(beta, lam, seed)}
                    writer.trial(overrides, seed, step1, final, status="FAILED", error=FAILED_ERROR)
                else:
                    writer.trial(overrides, seed, step1, final=_grid_final(beta, lam, seed))
    writer.finish()
    return writer.parent_run_id


def _write_pareto_study(uri: str) -> str:
    spec = _study(
        "pareto",
        {"kind": "synthetic", "n_samples": 2000},
        {
            "algorithm": "tpe",
            "num_trials": len(PARETO_TRIALS),
            "metric": ["probe/specific1/y_1", "probe/specific1/y_c"],
            "mode": ["max", "min"],
            "space": {"step2.lambda": {"type": "uniform", "low": 0.0, "high": 5.0}},
        },
    )
    writer = _StudyWriter(uri, spec)
    for lam, on_y1, on_yc in PARETO_TRIALS:
        step1 = {"mi/shared_infonce_lower_bound": 4.0, "mi/cmi_upper_bound_kl": 1.0}
        final = {"probe/specific1/y_1": on_y1, "probe/specific1/y_c": on_yc, "probe/shared/y_c": 0.75}
        writer.trial({"step2.lambda": lam}, 0, step1, final)
    # Stopped early by a scheduler: no probe metrics.
    writer.trial({"step2.lambda": 5.0}, 0, step1, None, status="KILLED", error="SystemExit: stopped by ASHA")
    writer.finish()
    return writer.parent_run_id


def _write_digits_study(uri: str) -> str:
    spec = _study(
        "digits",
        {"kind": "digits"},
        {
            "algorithm": "tpe",
            "num_trials": 3,
            "metric": "probe/shared/digit",
            "space": {"step1.beta": {"type": "loguniform", "low": 1.0e-3, "high": 10.0}},
        },
        step2=False,
    )
    writer = _StudyWriter(uri, spec, log_study_yaml=False)
    for beta in (0.01, 1.0, 100.0):
        lower, upper = _mi_bounds(beta, 0)
        step1 = {"mi/shared_infonce_lower_bound": lower, "mi/cmi_upper_bound_kl": upper}
        writer.trial({"step1.beta": beta}, 0, step1, {"probe/shared/digit": 0.9 - 0.1 * GRID_BETAS.index(beta)})
    writer.finish()
    return writer.parent_run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Return the tracking URI and each study's parent run id."""
    folder = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return {
        "uri": uri,
        "grid": _write_grid_study(uri),
        "pareto": _write_pareto_study(uri),
        "digits": _write_digits_study(uri),
    }


@pytest.fixture(scope="module")
def grid_report(store: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    return build_report("grid", store["uri"], tmp_path_factory.mktemp("grid-report"))


@pytest.fixture(scope="module")
def pareto_report(store: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    return build_report("pareto", store["uri"], tmp_path_factory.mktemp("pareto-report"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > 10_000, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def test_grid_table_rows_and_status(grid_report) -> None:
    rows = _read_csv(grid_report.table_csv)
    assert len(rows) == len(GRID_BETAS) * len(GRID_LAMBDAS) * len(SEEDS)
    statuses = [row["status"] for row in rows]
    assert statuses.count("FAILED") == 1
    assert statuses.count("FINISHED") == len(rows) - 1
    assert grid_report.status_counts == {"FINISHED": 15, "FAILED": 1}


def test_grid_table_columns(grid_report) -> None:
    header = list(_read_csv(grid_report.table_csv)[0])
    assert header[:4] == ["trial_id", "run_id", "run_name", "status"]
    # The varied parameters come first, then the constant ones.
    assert header[4:7] == ["params.step1.beta", "params.step2.lambda", "params.seed"]
    assert "params.trial_id" not in header
    assert "params.hidden_dim" in header
    assert "params.resources.num_workers" in header
    assert "metrics.probe/shared/y_c" in header
    assert "metrics.mi/cmi_upper_bound_kl" in header
    assert "pareto_optimal" not in header
    assert header[-1] == "error"


def test_grid_table_values(grid_report) -> None:
    rows = _read_csv(grid_report.table_csv)
    # Rows are sorted by the varied parameters (seed last), numerically.
    settings = [(float(r["params.step1.beta"]), float(r["params.step2.lambda"]), int(r["params.seed"])) for r in rows]
    assert settings == sorted(settings)
    for row, (beta, lam, seed) in zip(rows, settings):
        if (beta, lam, seed) == FAILED_SETTING:
            assert row["status"] == "FAILED"
            assert float(row["metrics.probe/shared/y_c"]) == 0.0
            assert row["error"] == FAILED_ERROR
            continue
        assert float(row["metrics.probe/shared/y_c"]) == pytest.approx(_shared_accuracy("y_c", beta, seed))
        assert float(row["metrics.probe/specific1/y_1"]) == pytest.approx(_specific_accuracy("y_1", beta, lam, seed))
        # The latest epoch's value, not the first epoch's half value.
        assert float(row["metrics.mi/shared_infonce_lower_bound"]) == pytest.approx(_mi_bounds(beta, seed)[0])
        assert row["params.step1.penalty"] == "cosine"
        assert row["error"] == ""


def test_grid_markdown_table(grid_report) -> None:
    text = grid_report.table_markdown.read_text()
    assert text.startswith("# Study grid\n")
    assert "15 FINISHED" in text
    assert "1 FAILED" in text
    assert "`probe/shared/y_c` (max)" in text
    header = next(line for line in text.splitlines() if line.startswith("| trial"))
    assert header.split(" | ")[:5] == ["| trial", "status", "step1.beta", "step2.lambda", "seed"]
    table_rows = [line for line in text.splitlines() if line.startswith("| t0")]
    assert len(table_rows) == 16
    assert FAILED_ERROR in text
    assert f"`{PARETO_FRONT}` skipped: single-objective study" in text


# --------------------------------------------------------------------------------------------
# Figures, skips and artifacts
# --------------------------------------------------------------------------------------------


def test_grid_figures_written(grid_report) -> None:
    assert set(grid_report.figures) == {FIGURE_4A, FIGURE_4B, INFORMATION_PLANE}
    for path in grid_report.figures.values():
        _assert_png(path)
        assert path.parent == grid_report.out_dir


def _finished_values(function, beta: float, seeds_and_lambdas) -> list[float]:
    return [function(beta, lam, seed) for lam, seed in seeds_and_lambdas if (beta, lam, seed) != FAILED_SETTING]


def _grid_settings() -> list[tuple[float, int]]:
    return [(lam, seed) for lam in GRID_LAMBDAS for seed in SEEDS]


def test_figure4a_points_and_axes(grid_report) -> None:
    figure = report._figure_4a(list(grid_report.rows))
    zero_axes, log_axes = figure.axes
    assert log_axes.get_xscale() == "log"
    assert "log axis" in log_axes.get_xlabel()
    assert zero_axes.get_xlabel() == "β = 0"
    assert zero_axes.get_ylabel() == "linear-probe test accuracy (fraction)"
    plotted = {c.get_label(): c.lines[0].get_xydata().tolist() for c in log_axes.containers}
    assert set(plotted) == {"Yc (shared label)", "Y1 (X1-specific)", "Y2 (X2-specific)"}
    # Means over seeds and lambdas of the FINISHED trials: the FAILED trial's zeros stay out.
    for label, name in (("Yc (shared label)", "y_c"), ("Y2 (X2-specific)", "y_2")):
        xs = [x for x, _ in plotted[label]]
        assert xs == [beta for beta in GRID_BETAS if beta > 0]
        for (beta, mean) in plotted[label]:
            expected = _finished_values(lambda b, lam, seed: _shared_accuracy(name, b, seed), beta, _grid_settings())
            assert mean == pytest.approx(np.mean(expected))
    zero = zero_axes.containers[0].lines[0].get_xydata().tolist()
    assert zero == [[0.0, pytest.approx(np.mean([_shared_accuracy("y_c", 0.0, s) for s in SEEDS]))]]


def test_figure4b_curves_ordered_by_lambda(grid_report) -> None:
    figure = report._figure_4b(list(grid_report.rows))
    curves = {c.get_label(): c.lines[0].get_xydata().tolist() for c in figure.axes[0].containers}
    assert set(curves) == {f"disentangled_ssl, β = {beta:g}" for beta in GRID_BETAS}
    points = curves["disentangled_ssl, β = 100"]
    assert len(points) == len(GRID_LAMBDAS)
    for (x, y), lam in zip(points, GRID_LAMBDAS):
        seeds = [seed for seed in SEEDS if (100.0, lam, seed) != FAILED_SETTING]
        assert x == pytest.approx(np.mean([_specific_accuracy("y_c", 100.0, lam, seed) for seed in seeds]))
        assert y == pytest.approx(np.mean([_specific_accuracy("y_1", 100.0, lam, seed) for seed in seeds]))


def test_information_plane_points(grid_report) -> None:
    axes = report._information_plane(list(grid_report.rows)).axes[0]
    path = axes.lines[0].get_xydata().tolist()
    assert len(path) == len(GRID_BETAS)
    for (x, y), beta in zip(path, GRID_BETAS):
        bounds = _finished_values(lambda b, lam, seed: _mi_bounds(b, seed), beta, _grid_settings())
        assert x == pytest.approx(np.mean([upper for _, upper in bounds]))
        assert y == pytest.approx(np.mean([lower for lower, _ in bounds]))
    assert axes.get_xlabel().endswith("(nats; mi/cmi_upper_bound_kl)")
    assert "nats; mi/shared_infonce_lower_bound" in axes.get_ylabel()


def test_information_plane_labels_each_beta_once(grid_report) -> None:
    axes = report._information_plane(list(grid_report.rows)).axes[0]
    labels = [text.get_text() for text in axes.texts]
    assert all(label.startswith("β=") for label in labels)
    named = [value for label in labels for value in label[len("β="):].split(", ")]
    assert sorted(float(value) for value in named) == sorted(GRID_BETAS)


def test_nearby_points_share_a_group() -> None:
    xs = [0.0, 0.5, 50.0, 100.0, 99.0]
    ys = [0.0, 0.1, 5.0, 10.0, 10.0]
    groups = report._nearby_groups(xs, ys, report._extent(xs, ys))
    assert groups == [(0, [0, 1]), (2, [2]), (3, [3, 4])]
    # Grouping compares with the group's first point, so a slow drift starts new groups.
    drift = [0.0, 0.04, 0.08, 0.12]
    groups = report._nearby_groups(drift, [0.0] * 4, (0.0, 1.0, 0.0, 1.0))
    assert groups == [(0, [0, 1]), (2, [2, 3])]


def test_shared_settings_leave_out_unread_sections(grid_report) -> None:
    text = grid_report.table_markdown.read_text()
    shared = next(line for line in text.splitlines() if line.startswith("Settings shared by every trial"))
    assert "`step1.kappa=" in shared
    assert "`step2.penalty=orthogonality`" in shared
    for section in ("joint_opt.", "focal.", "dmvae."):
        assert f"`{section}" not in shared
    assert "=null`" not in shared


def test_grid_pareto_skipped_with_reason(grid_report) -> None:
    assert set(grid_report.skipped) == {PARETO_FRONT}
    assert "single-objective study (metric: probe/shared/y_c)" in grid_report.skipped[PARETO_FRONT]
    assert not (grid_report.out_dir / PARETO_FRONT).exists()


def test_artifacts_logged_on_parent(grid_report, store: dict[str, str]) -> None:
    client = MlflowClient(tracking_uri=store["uri"])
    logged = {Path(item.path).name: item.file_size for item in client.list_artifacts(store["grid"], "report")}
    assert set(logged) == {"results.csv", "results.md", FIGURE_4A, FIGURE_4B, INFORMATION_PLANE}
    assert all(size > 0 for size in logged.values())
    assert logged[FIGURE_4A] == (grid_report.out_dir / FIGURE_4A).stat().st_size
    assert grid_report.parent_run_id == store["grid"]


def test_pareto_rows_marked(pareto_report) -> None:
    assert pareto_report.objectives == (("probe/specific1/y_1", "max"), ("probe/specific1/y_c", "min"))
    rows = _read_csv(pareto_report.table_csv)
    marked = {float(r["params.step2.lambda"]): (r["status"], r["pareto_optimal"]) for r in rows}
    assert marked == {
        0.0: ("FINISHED", "True"),
        1.0: ("FINISHED", "False"),
        2.0: ("FINISHED", "True"),
        3.0: ("FINISHED", "False"),
        4.0: ("FINISHED", "True"),
        5.0: ("KILLED", ""),
    }
    assert len(pareto_report.pareto_run_ids) == 3
    text = pareto_report.table_markdown.read_text()
    assert sum(1 for line in text.splitlines() if line.startswith("| t0") and "| yes |" in line) == 3


def test_pareto_study_figures_and_skips(pareto_report) -> None:
    assert set(pareto_report.figures) == {FIGURE_4B, PARETO_FRONT}
    _assert_png(pareto_report.figures[PARETO_FRONT])
    _assert_png(pareto_report.figures[FIGURE_4B])
    assert set(pareto_report.skipped) == {FIGURE_4A, INFORMATION_PLANE}
    assert "step1.beta is not varied" in pareto_report.skipped[FIGURE_4A]
    assert "step1.beta is not varied" in pareto_report.skipped[INFORMATION_PLANE]


def test_digits_skips_label_figures(store: dict[str, str], tmp_path: Path) -> None:
    # A stale figure from an earlier report must not survive a report that skips it.
    (tmp_path / FIGURE_4B).write_bytes(PNG_SIGNATURE)
    result = build_report("digits", store["uri"], tmp_path)
    assert set(result.figures) == {INFORMATION_PLANE}
    assert set(result.skipped) == {FIGURE_4A, FIGURE_4B, PARETO_FRONT}
    assert "probe/shared/y_c" in result.skipped[FIGURE_4A]
    assert "probe/shared/digit" in result.skipped[FIGURE_4A]
    assert "probe/specific1/ metrics found: none" in result.skipped[FIGURE_4B]
    assert not (tmp_path / FIGURE_4B).exists()
    # Without study.yaml the objectives come from the parent run's parameters.
    assert result.objectives == (("probe/shared/digit", "max"),)


def test_skips_are_logged(store: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dssl.study.report"):
        build_report("digits", store["uri"], tmp_path)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith(f"report: {FIGURE_4B} skipped: no FINISHED trial") for m in messages)


# --------------------------------------------------------------------------------------------
# Finding the study
# --------------------------------------------------------------------------------------------


def test_study_file_selects_experiment(store: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    spec = _study("grid", {"kind": "synthetic"}, {"metric": "probe/shared/y_c", "num_trials": 1})
    path.write_text(dump_resolved_yaml(spec))
    result = build_report(path, store["uri"], tmp_path / "out")
    assert result.parent_run_id == store["grid"]
    assert len(result.rows) == 16


def test_explicit_parent_run_id(store: dict[str, str], tmp_path: Path) -> None:
    result = build_report("pareto", store["uri"], tmp_path, parent_run_id=store["pareto"])
    assert result.parent_run_id == store["pareto"]
    with pytest.raises(ReportInputError, match="belongs to study 'pareto', not 'grid'"):
        build_report("grid", store["uri"], tmp_path, parent_run_id=store["pareto"])


def test_trial_run_is_not_parent(store: dict[str, str], tmp_path: Path) -> None:
    child = MlflowClient(tracking_uri=store["uri"]).search_runs(
        [MlflowClient(tracking_uri=store["uri"]).get_run(store["grid"]).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{store['grid']}'",
        max_results=1,
    )[0]
    with pytest.raises(ReportInputError, match="is not a study parent run"):
        build_report("grid", store["uri"], tmp_path, parent_run_id=child.info.run_id)


@pytest.mark.parametrize(
    ("study", "parent_run_id", "message"),
    [
        ("absent.yaml", None, "study file 'absent.yaml' not found"),
        ("bad'name", None, "invalid study name \"bad'name\""),
        ("grid", "abc'", "parent run \"abc'\" not found"),
    ],
)
def test_bad_study_or_run_rejected(
    store: dict[str, str], tmp_path: Path, study: str, parent_run_id: str | None, message: str
) -> None:
    with pytest.raises(ReportInputError) as caught:
        build_report(study, store["uri"], tmp_path / "out", parent_run_id=parent_run_id)
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_missing_database_rejected(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(ReportInputError, match="MLflow database .*absent.db not found"):
        build_report("grid", uri, tmp_path)
    assert not (tmp_path / "absent.db").exists()


def test_pareto_mask_modes() -> None:
    values = np.array([[0.7, 0.6], [0.6, 0.5], [0.5, 0.7], [0.5, 0.7]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, False, True, True]
    assert pareto_mask(values, ["min", "min"]).tolist() == [False, True, True, True]
    assert pareto_mask(values, ["min", "max"]).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="modes must be 'max' or 'min'; got \\['best'\\]"):
        pareto_mask(values, ["max", "best"])


# --------------------------------------------------------------------------------------------
# Command line and the runner hook
# --------------------------------------------------------------------------------------------


def test_cli_unknown_study_exits_2(store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["report", "no-such-study", "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "no parent run of study 'no-such-study'" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_unknown_parent_run_exits_2(store: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["report", "grid", "--tracking-uri", store["uri"], "--parent-run-id", "0" * 32])
    assert status == 2
    assert f"parent run '{'0' * 32}' not found" in capsys.readouterr().err


def test_cli_subprocess_writes_report(store: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dssl.cli", "report", "grid", "--tracking-uri", store["uri"]],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "reports" / "grid"
    assert len(_read_csv(folder / "results.csv")) == 16
    for name in (FIGURE_4A, FIGURE_4B, INFORMATION_PLANE):
        _assert_png(folder / name)
    assert f"{PARETO_FRONT} skipped: single-objective study" in result.stdout
    assert store["grid"] in result.stdout


def test_runner_hook_logs_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    with caplog.at_level(logging.ERROR, logger="dssl.study.runner"):
        assert _report_study("grid", uri, "0" * 32, tmp_path / "report") is None
    assert any("report could not be written" in record.getMessage() for record in caplog.records)


def test_runner_hook_writes_report(store: dict[str, str], tmp_path: Path) -> None:
    folder = _report_study("pareto", store["uri"], store["pareto"], tmp_path / "report")
    assert folder == tmp_path / "report"
    assert len(_read_csv(folder / "results.csv")) == len(PARETO_TRIALS) + 1
