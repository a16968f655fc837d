"""Every method in one study: studies/smoke-methods.yaml, and a grid union of per-method grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from dssl.study.runner import run_study
from dssl.study.schema import StudyValidationError, load_study
from dssl.study.space import grid_size

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
METHODS = {"disentangled_ssl", "clip", "joint_opt", "focal", "dmvae"}


def _children(uri: str, name: str, parent_run_id: str) -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_run_id]


def test_smoke_methods_study(local_ray: None, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(REPO_ROOT / "studies" / "smoke-methods.yaml", tracking_uri=uri, storage_path=tmp_path)

    assert outcome.trials == 5
    assert outcome.errors == 0
    runs = _children(uri, "smoke-methods", outcome.parent_run_id)
    assert {run.data.params["name"] for run in runs} == METHODS
    for run in runs:
        method = run.data.params["name"]
        assert run.info.status == "FINISHED", method
        assert 0.5 < run.data.metrics["probe/shared/y_c"] <= 1.0, method
        has_specific = "probe/specific1/y_1" in run.data.metrics
        assert has_specific == (method != "clip"), method
    joint = [run for run in runs if run.data.params["name"] in ("joint_opt", "focal", "dmvae")]
    for run in joint:
        assert "joint/train/loss" in run.data.metrics


def _union_study(tmp_path: Path) -> Path:
    document = yaml.safe_load((REPO_ROOT / "studies" / "smoke-methods.yaml").read_text())
    document["name"] = "union"
    document["search"].pop("space")
    document["search"]["seeds"] = [0, 1]
    document["search"]["grids"] = [
        {"name": {"type": "grid", "values": ["disentangled_ssl"]}, "step2.lambda": {"type": "grid", "values": [0.0, 5.0]}},
        {"name": {"type": "grid", "values": ["focal"]}, "focal.a": {"type": "grid", "values": [0.5]}},
    ]
    path = tmp_path / "union.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_grid_union_counts_points(tmp_path: Path) -> None:
    spec = load_study(_union_study(tmp_path))

    assert grid_size(spec) == 6
    assert spec.search.num_trials == 6


def test_grid_union_rejects_range_axis(tmp_path: Path) -> None:
    path = _union_study(tmp_path)
    document = yaml.safe_load(path.read_text())
    document["search"]["grids"][1]["focal.a"] = {"type": "loguniform", "low": 0.1, "high": 10.0}
    path.write_text(yaml.safe_dump(document))

    with pytest.raises(StudyValidationError, match=r"grids.*focal\.a"):
        load_study(path)


def test_grid_union_visits_each_point(local_ray: None, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(_union_study(tmp_path), tracking_uri=uri, storage_path=tmp_path / "results")

    assert outcome.errors == 0
    runs = _children(uri, "union", outcome.parent_run_id)
    visited = sorted(
        (run.data.params["name"], run.data.params["step2.lambda"], run.data.params["focal.a"], run.data.params["seed"])
        for run in runs
    )
    assert visited == [
        ("disentangled_ssl", "0.0", "1.0", "0"),
        ("disentangled_ssl", "0.0", "1.0", "1"),
        ("disentangled_ssl", "5.0", "1.0", "0"),
        ("disentangled_ssl", "5.0", "1.0", "1"),
        ("focal", "1.0", "0.5", "0"),
        ("focal", "1.0", "0.5", "1"),
    ]


def _report_study(tmp_path: Path) -> Path:
    document = yaml.safe_load((REPO_ROOT / "studies" / "smoke-methods.yaml").read_text())
    document["name"] = "report-smoke"
    document["search"].pop("space")
    document["search"]["metric"] = ["probe/specific1/y_1", "probe/specific1/y_c"]
    document["search"]["mode"] = ["max", "min"]
    document["search"]["grids"] = [
        {
            "name": {"type": "grid", "values": ["disentangled_ssl"]},
            "step1.beta": {"type": "grid", "values": [0.01, 10.0]},
            "step2.lambda": {"type": "grid", "values": [0.0, 5.0]},
        },
        {"name": {"type": "grid", "values": ["focal"]}},
    ]
    path = tmp_path / "report-smoke.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_smoke_study_report_matches_runs(local_ray: None, tmp_path: Path) -> None:
    from dssl.study import report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(_report_study(tmp_path), tracking_uri=uri, storage_path=tmp_path / "results")
    assert outcome.errors == 0
    folders = list((tmp_path / "results").glob("report-smoke-*/report"))
    assert len(folders) == 1
    written = {path.name for path in folders[0].iterdir()}
    assert written == {
        "results.csv",
        "results.md",
        "figure4a.png",
        "figure4b.png",
        "information_plane.png",
        "pareto_front.png",
    }

    # The plotted Figure 4a means are the logged probe accuracies of the DisentangledSSL runs.
    runs = _children(uri, "report-smoke", outcome.parent_run_id)
    result = report.build_report("report-smoke", uri, tmp_path / "again", parent_run_id=outcome.parent_run_id)
    figure = report._figure_4a(list(result.rows))
    plotted = {c.get_label(): c.lines[0].get_xydata().tolist() for c in figure.axes[0].containers}
    for beta, mean in plotted["Yc (shared label)"]:
        logged = [
            run.data.metrics["probe/shared/y_c"]
            for run in runs
            if run.data.params["name"] == "disentangled_ssl" and float(run.data.params["step1.beta"]) == beta
        ]
        assert len(logged) == 2
        assert mean == pytest.approx(sum(logged) / len(logged))
    assert [beta for beta, _ in plotted["Yc (shared label)"]] == [0.01, 10.0]
