"""Study reports: a results table and figures built from a study's MLflow runs.

A study run by ``dssl run`` leaves one MLflow parent run and one child run per trial. The parent
run has the tag ``dssl.kind = study``, the parameter ``study.name`` and the resolved study file as
the artifact ``study.yaml``. Each child run has the tag ``mlflow.parentRunId``, flattened method
parameters such as ``step1.beta``, the parameter ``seed``, and per-epoch and final metrics.
:func:`build_report` reads those runs and writes these files into a folder and, as artifacts,
onto the parent run under ``report/``:

- ``results.csv`` and ``results.md``: one row per trial with its status, parameters and final
  metrics (the latest value MLflow stores for each metric). Multi-objective studies get a
  ``pareto_optimal`` column.
- ``figure4a.png``: shared-representation probe accuracy on Yc, Y1 and Y2 against ``step1.beta``.
- ``figure4b.png``: the X1-specific representation's accuracy on Y1 against its accuracy on Yc,
  one curve per method and ``step1.beta``, points ordered by ``step2.lambda``.
- ``information_plane.png``: the I(Z; X2) lower bound against the I(Z; X1 | X2) upper bound,
  one point per ``step1.beta``.
- ``pareto_front.png``: the first two objectives of a multi-objective study, Pareto-optimal
  trials highlighted.

Figures average over seeds: a point is the mean of the FINISHED trials that share its settings,
and its error bars span the minimum to the maximum of those trials. Trials that are FAILED,
KILLED or still RUNNING appear in the table only. A figure that does not apply to the study is
skipped, and the reason is logged and returned in :attr:`ReportResult.skipped`.

Example:
    >>> from dssl.study.report import build_report
    >>> result = build_report("studies/demo.yaml", "sqlite:///mlflow.db", "reports/demo")  # doctest: +SKIP
    >>> sorted(result.figures), result.skipped  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from dssl.study.schema import STUDY_NAME_PATTERN, load_study, method_readers
from dssl.study.tracking import PARENT_TAG, TRIAL_ID_TAG, resolve_tracking_uri

logger = logging.getLogger(__name__)

REPORT_ARTIFACT_PATH = "report"
"""Artifact folder of the parent run that receives the report files."""

DEFAULT_REPORT_FOLDER = "reports"
"""Folder, relative to the working folder, that contains ``<study name>/`` when no output folder is given."""

RESULTS_CSV = "results.csv"
RESULTS_MARKDOWN = "results.md"
FIGURE_4A = "figure4a.png"
FIGURE_4B = "figure4b.png"
INFORMATION_PLANE = "information_plane.png"
PARETO_FRONT = "pareto_front.png"
FIGURE_FILES = (FIGURE_4A, FIGURE_4B, INFORMATION_PLANE, PARETO_FRONT)

STUDY_KIND_TAG = "dssl.kind"
ERROR_TAG = "dssl.error"
FINISHED = "FINISHED"

BETA_PARAM = "step1.beta"
PENALTY_PARAM = "step1.penalty"
# flatten_params writes the YAML name step2.lambda, and step2.lam is the Python attribute name.
LAMBDA_PARAMS = ("step2.lambda", "step2.lam")
# flatten_params of a MethodSpec writes the method name as "name". "method.name" is accepted too.
METHOD_NAME_PARAMS = ("method.name", "name")
DEFAULT_METHOD_NAME = "disentangled_ssl"
SEED_PARAM = "seed"

SHARED_LABEL_METRICS = {
    "Yc (shared label)": "probe/shared/y_c",
    "Y1 (X1-specific)": "probe/shared/y_1",
    "Y2 (X2-specific)": "probe/shared/y_2",
}
SPECIFIC1_Y1 = "probe/specific1/y_1"
SPECIFIC1_YC = "probe/specific1/y_c"
SHARED_MI_LOWER = "mi/shared_infonce_lower_bound"
CMI_UPPER = "mi/cmi_upper_bound_kl"

PAPER_SOURCE = "DisentangledSSL, ICLR 2025"

PAPER_FIGURE_4A: dict[str, dict[float, float]] = {
    "probe/shared/y_c": {
        1e-3: 0.78, 1e-2: 0.78, 0.1: 0.78, 0.5: 0.77, 1.0: 0.76, 5.0: 0.72,
        10.0: 0.71, 50.0: 0.69, 100.0: 0.68, 300.0: 0.59, 500.0: 0.57, 1000.0: 0.56,
    },
    "probe/shared/y_1": {
        1e-3: 0.67, 1e-2: 0.67, 0.1: 0.67, 0.5: 0.65, 1.0: 0.64, 5.0: 0.61,
        10.0: 0.61, 50.0: 0.60, 100.0: 0.59, 300.0: 0.50, 500.0: 0.50, 1000.0: 0.50,
    },
    "probe/shared/y_2": {
        1e-3: 0.68, 1e-2: 0.68, 0.1: 0.68, 0.5: 0.66, 1.0: 0.65, 5.0: 0.63,
        10.0: 0.61, 50.0: 0.59, 100.0: 0.58, 300.0: 0.52, 500.0: 0.51, 1000.0: 0.51,
    },
}  # fmt: skip
"""Shared-representation probe accuracy after step 1, mean over seeds 0-2, by beta on the cosine scale.

Source: DisentangledSSL, ICLR 2025, Figure 4a (Wang et al., arXiv 2410.23996), full synthetic
benchmark with the reference settings. The values were read off the plot and are accurate to
about ±0.01.
"""

PAPER_FIGURE_4B_FRONT: tuple[tuple[float, float], ...] = ((0.67, 0.74), (0.585, 0.74), (0.555, 0.67))
"""DisentangledSSL's front of the X1-specific representation as (accuracy on Yc, accuracy on Y1).

Source: DisentangledSSL, ICLR 2025, Figure 4b, beta 0.01 or 0.1 with lambda swept from 0 (first
point) to its largest value (last point). Read off the plot, accurate to about ±0.01.
"""

# MLflow error codes of get_run for an unknown id and for a malformed one.
_RUN_ID_ERRORS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
_PAGE_SIZE = 1000
_MARKDOWN_METRIC_PREFIXES = ("probe/", "mi/", "time/trial_seconds")
_LABEL_COLORS = ("C0", "C1", "C2")


class ReportInputError(ValueError):
    """Raised when the tracking store, study, experiment or parent run is not found or does not match."""


class _FigureSkipped(Exception):
    """Raised by a figure builder whose figure does not apply to the study, with the reason as message."""


@dataclasses.dataclass(frozen=True)
class TrialRow:
    """One trial's child run: identity, status, parameters as logged and latest metric values."""

    run_id: str
    run_name: str
    trial_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    error: str = ""
    pareto_optimal: bool | None = None

    @property
    def finished(self) -> bool:
        """Whether the run ended FINISHED, the only status that figures use."""
        return self.status == FINISHED

    def metric(self, name: str) -> float | None:
        """Return the metric's latest value, or ``None`` when it is missing or not finite."""
        value = self.metrics.get(name)
        if value is None or not math.isfinite(value):
            return None
        return value

    def param_float(self, name: str) -> float | None:
        """Return the parameter as a float, or ``None`` when it is missing or not a number."""
        return _as_float(self.params.get(name))


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """Outcome of :func:`build_report`: the files written, the figures skipped and the table rows.

    Attributes:
        study_name: The study's name (the parent run's ``study.name`` parameter).
        experiment_name: The MLflow experiment that contains the study's runs.
        parent_run_id: The study run the report describes.
        out_dir: The folder that contains the written files.
        table_csv: Path of ``results.csv``.
        table_markdown: Path of ``results.md``.
        figures: Figure file name to the path written, for every figure that applies.
        skipped: Figure file name to the reason it was skipped.
        rows: One row per trial, in table order.
        objectives: ``(metric, mode)`` pairs of the study's search, empty when the parent run
            records none.
        artifact_path: Artifact folder of the parent run that received the files.
    """

    study_name: str
    experiment_name: str
    parent_run_id: str
    out_dir: Path
    table_csv: Path
    table_markdown: Path
    figures: dict[str, Path]
    skipped: dict[str, str]
    rows: tuple[TrialRow, ...]
    objectives: tuple[tuple[str, str], ...]
    artifact_path: str = REPORT_ARTIFACT_PATH

    @property
    def status_counts(self) -> dict[str, int]:
        """Number of trials per run status."""
        counts: dict[str, int] = defaultdict(int)
        for row in self.rows:
            counts[row.status] += 1
        return dict(counts)

    @property
    def pareto_run_ids(self) -> tuple[str, ...]:
        """Run ids of the Pareto-optimal trials (empty for single-objective studies)."""
        return tuple(row.run_id for row in self.rows if row.pareto_optimal)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_report(
    study_name_or_file: str | os.PathLike[str],
    tracking_uri: str | None,
    out_dir: str | os.PathLike[str] | None,
    parent_run_id: str | None = None,
) -> ReportResult:
    """Write a study's results table and figures and log them as artifacts of its parent run.

    Args:
        study_name_or_file: A study YAML file (its ``tracking.experiment`` and ``name`` select the
            runs) or a study name.
        tracking_uri: MLflow tracking URI. ``None`` uses ``MLFLOW_TRACKING_URI`` or
            ``sqlite:///./mlflow.db``.
        out_dir: Folder for the files, created when missing. ``None`` uses
            ``reports/<study name>/``. Report files that a previous report left there and this
            one skips are removed.
        parent_run_id: The study run to report. ``None`` takes the study's latest parent run.

    Returns:
        The files written, the figures skipped with their reasons, and the table rows.

    Raises:
        ReportInputError: The tracking store, study file, experiment or parent run is not found,
            or ``parent_run_id`` belongs to another study.
        dssl.study.schema.StudyValidationError: ``study_name_or_file`` is an invalid study file.
    """
    uri = resolve_tracking_uri(tracking_uri)
    _check_store(uri)
    study_name, experiment_name = _study_names(study_name_or_file)
    client = MlflowClient(tracking_uri=uri)

    parent = _find_parent_run(client, uri, study_name, experiment_name, parent_run_id)
    parent_id = parent.info.run_id
    study_name = parent.data.params.get("study.name", study_name)
    experiment = client.get_experiment(parent.info.experiment_id)
    objectives = _study_objectives(client, parent)
    rows = _pareto_marked(_trial_rows(client, parent), objectives)
    logger.info("report of study %s: parent run %s, %d trial runs", study_name, parent_id, len(rows))

    folder = Path(out_dir) if out_dir is not None else Path(DEFAULT_REPORT_FOLDER) / study_name
    folder.mkdir(parents=True, exist_ok=True)
    table_csv = folder / RESULTS_CSV
    table_markdown = folder / RESULTS_MARKDOWN

    figures, skipped = _write_figures(rows, objectives, folder)
    _write_csv(rows, table_csv, multi_objective=len(objectives) > 1)
    _write_markdown(rows, objectives, table_markdown, study_name, experiment.name, parent_id, figures, skipped)

    for path in (table_csv, table_markdown, *figures.values()):
        client.log_artifact(parent_id, str(path), artifact_path=REPORT_ARTIFACT_PATH)
    logger.info(
        "report of study %s written to %s and logged to run %s under %s/",
        study_name,
        folder,
        parent_id,
        REPORT_ARTIFACT_PATH,
    )

    return ReportResult(
        study_name=study_name,
        experiment_name=experiment.name,
        parent_run_id=parent_id,
        out_dir=folder,
        table_csv=table_csv,
        table_markdown=table_markdown,
        figures=figures,
        skipped=skipped,
        rows=tuple(rows),
        objectives=tuple(objectives),
    )


# --------------------------------------------------------------------------------------------
# Finding the runs
# --------------------------------------------------------------------------------------------


def _check_store(uri: str) -> None:
    """Reject a store that cannot hold the study, before MLflow creates an empty database or retries for minutes."""
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///") :])
        if not database.is_file():
            raise ReportInputError(
                f"MLflow database {database} not found; pass --tracking-uri with the store the study ran "
                "with (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"
            )
        return
    if uri.startswith(("http://", "https://")):
        from dssl.study.runner import InvalidStudyInputError, check_tracking_uri

        try:
            check_tracking_uri(uri)
        except InvalidStudyInputError as error:
            raise ReportInputError(str(error)) from error


def _study_names(study_name_or_file: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Return ``(study name, experiment name)``, with the experiment ``None`` when only a name is given."""
    text = os.fspath(study_name_or_file)
    path = Path(text)
    if path.is_file():
        spec = load_study(path)
        return spec.name, spec.tracking.experiment or spec.name
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        raise ReportInputError(f"study file {text!r} not found; pass an existing study file or a study name")
    if not STUDY_NAME_PATTERN.match(text):
        raise ReportInputError(
            f"invalid study name {text!r}: a study name uses only letters, digits, '_', '.' and '-'; "
            "pass a study name or an existing study file"
        )
    return text, None


def _find_parent_run(
    client: MlflowClient,
    uri: str,
    study_name: str,
    experiment_name: str | None,
    parent_run_id: str | None,
) -> Run:
    """Return the requested parent run, or the latest parent run of ``study_name``."""
    if parent_run_id:
        return _get_parent_run(client, uri, study_name, parent_run_id)

    experiment = client.get_experiment_by_name(experiment_name or study_name)
    if experiment is not None and experiment.lifecycle_stage == "active":
        experiment_ids = [experiment.experiment_id]
    elif experiment_name is not None:
        raise ReportInputError(
            f"MLflow experiment {experiment_name!r} of study {study_name!r} not found in {uri}; "
            "pass the --tracking-uri the study ran with"
        )
    else:
        # A study name alone does not fix the experiment, because tracking.experiment may rename it.
        experiment_ids = [e.experiment_id for e in client.search_experiments()]

    runs = []
    if experiment_ids:
        runs = client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{STUDY_KIND_TAG}` = 'study' and params.`study.name` = '{study_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        searched = f"experiment {experiment.name!r}" if len(experiment_ids) == 1 and experiment else "any experiment"
        raise ReportInputError(
            f"no parent run of study {study_name!r} found in {searched} of {uri}; run the study with "
            "'dssl run', or pass the --tracking-uri it ran with"
        )
    return runs[0]


def _get_parent_run(client: MlflowClient, uri: str, study_name: str, parent_run_id: str) -> Run:
    try:
        run = client.get_run(parent_run_id)
    except MlflowException as error:
        if error.error_code not in _RUN_ID_ERRORS:
            raise
        raise ReportInputError(f"parent run {parent_run_id!r} not found in {uri}") from error
    kind = run.data.tags.get(STUDY_KIND_TAG)
    if kind != "study":
        raise ReportInputError(
            f"run {parent_run_id!r} is not a study parent run (tag {STUDY_KIND_TAG} is {kind!r}, "
            "expected 'study'); pass the id of the run named <study>-<time>"
        )
    recorded = run.data.params.get("study.name")
    if recorded is not None and recorded != study_name:
        raise ReportInputError(
            f"parent run {parent_run_id!r} belongs to study {recorded!r}, not {study_name!r}"
        )
    return run


def _search_all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=_PAGE_SIZE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _trial_rows(client: MlflowClient, parent: Run) -> list[TrialRow]:
    """Return one row per child run of ``parent``, sorted by the parameters that vary, then seed."""
    children = _search_all_runs(
        client, parent.info.experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )
    rows = [
        TrialRow(
            run_id=run.info.run_id,
            run_name=run.info.run_name or "",
            trial_id=run.data.tags.get(TRIAL_ID_TAG, ""),
            status=run.info.status,
            params=dict(run.data.params),
            metrics={key: float(value) for key, value in run.data.metrics.items()},
            error=run.data.tags.get(ERROR_TAG, ""),
        )
        for run in children
    ]
    order = [name for name in _varying_params(rows) if name != SEED_PARAM] + [SEED_PARAM]

    def sort_key(row: TrialRow) -> tuple[Any, ...]:
        return tuple(_sortable(row.params.get(name)) for name in order) + (row.trial_id,)

    return sorted(rows, key=sort_key)


def _study_objectives(client: MlflowClient, parent: Run) -> list[tuple[str, str]]:
    """Return the study's ``(metric, mode)`` pairs from its ``study.yaml`` artifact, else from its parameters."""
    search: Mapping[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dssl-report-") as folder:
            local = client.download_artifacts(parent.info.run_id, "study.yaml", folder)
            loaded = yaml.safe_load(Path(local).read_text())
        if isinstance(loaded, Mapping) and isinstance(loaded.get("search"), Mapping):
            search = loaded["search"]
    except (MlflowException, OSError, yaml.YAMLError) as error:
        logger.warning("parent run %s: could not read study.yaml (%s); using its parameters", parent.info.run_id, error)
    if not search:
        params = parent.data.params
        search = {
            "metric": _parse_listing(params.get("search.metric")),
            "mode": _parse_listing(params.get("search.mode")),
        }

    metrics = _as_list(search.get("metric"))
    modes = _as_list(search.get("mode")) or ["max"]
    if len(modes) == 1 and len(metrics) > 1:
        modes = modes * len(metrics)
    if len(modes) != len(metrics) or any(mode not in ("max", "min") for mode in modes):
        logger.warning(
            "parent run %s: search metric %s and mode %s do not pair up, so the report has no objectives",
            parent.info.run_id,
            metrics,
            modes,
        )
        return []
    return [(str(metric), str(mode)) for metric, mode in zip(metrics, modes)]


def _parse_listing(value: str | None) -> Any:
    """Read a parameter logged as ``str(list)`` back into the list. Other strings are returned unchanged."""
    if value is None or not value.startswith("["):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Mark the rows of ``values`` that no other row dominates.

    Row a dominates row b when a is at least as good on every objective and better on one.

    Args:
        values: Objective values, shape ``(n, k)``, all finite.
        modes: ``"max"`` or ``"min"`` for each of the ``k`` columns.

    Returns:
        Boolean mask of shape ``(n,)``, true for Pareto-optimal rows. Rows with equal values
        are all Pareto-optimal.

    Raises:
        ValueError: ``values`` is not 2-D with one column per mode, or a mode is not max or min.

    Example:
        >>> pareto_mask(np.array([[0.7, 0.6], [0.6, 0.5], [0.5, 0.7]]), ["max", "max"]).tolist()
        [True, False, True]
    """
    if values.ndim != 2 or values.shape[1] != len(modes):
        raise ValueError(f"values must have shape (n, {len(modes)}), one column per mode; got {values.shape}")
    bad = [mode for mode in modes if mode not in ("max", "min")]
    if bad:
        raise ValueError(f"modes must be 'max' or 'min'; got {bad}")
    signs = np.array([1.0 if mode == "max" else -1.0 for mode in modes])
    scores = values * signs
    at_least = (scores[:, None, :] >= scores[None, :, :]).all(axis=2)
    better = (scores[:, None, :] > scores[None, :, :]).any(axis=2)
    dominated = (at_least & better).any(axis=0)
    return ~dominated


def _pareto_marked(rows: list[TrialRow], objectives: Sequence[tuple[str, str]]) -> list[TrialRow]:
    """Set ``pareto_optimal`` on FINISHED rows that have every objective of a multi-objective study.

    Other rows keep ``None`` because they are not compared.
    """
    if len(objectives) < 2:
        return rows
    metrics = [metric for metric, _ in objectives]
    eligible = [i for i, row in enumerate(rows) if row.finished and all(row.metric(m) is not None for m in metrics)]
    marked = list(rows)
    if not eligible:
        return marked
    values = np.array([[rows[i].metric(m) for m in metrics] for i in eligible], dtype=float)
    mask = pareto_mask(values, [mode for _, mode in objectives])
    for index, optimal in zip(eligible, mask):
        marked[index] = dataclasses.replace(rows[index], pareto_optimal=bool(optimal))
    return marked


def _varying_params(rows: Sequence[TrialRow]) -> list[str]:
    """Return the parameters (``trial_id`` aside) whose value differs between trials, sorted with ``seed`` last."""
    names = sorted({name for row in rows for name in row.params} - {"trial_id", SEED_PARAM}) + [SEED_PARAM]
    return [name for name in names if len({row.params.get(name) for row in rows}) > 1]


def _write_csv(rows: Sequence[TrialRow], path: Path, multi_objective: bool) -> None:
    """Write every parameter and metric: columns ``params.<name>`` and ``metrics.<name>``, as MLflow names them.

    The ``trial_id`` parameter is left out because the ``trial_id`` column repeats it.
    """
    varying = _varying_params(rows)
    constant = sorted({name for row in rows for name in row.params} - set(varying) - {"trial_id"})
    metric_names = sorted({name for row in rows for name in row.metrics})
    header = ["trial_id", "run_id", "run_name", "status"] + (["pareto_optimal"] if multi_objective else [])
    header += [f"params.{name}" for name in varying + constant]
    header += [f"metrics.{name}" for name in metric_names] + ["error"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            line: list[Any] = [row.trial_id, row.run_id, row.run_name, row.status]
            if multi_objective:
                line.append("" if row.pareto_optimal is None else row.pareto_optimal)
            line += [row.params.get(name, "") for name in varying + constant]
            line += [repr(row.metrics[name]) if name in row.metrics else "" for name in metric_names]
            line.append(row.error)
            writer.writerow(line)


def _write_markdown(
    rows: Sequence[TrialRow],
    objectives: Sequence[tuple[str, str]],
    path: Path,
    study_name: str,
    experiment_name: str,
    parent_run_id: str,
    figures: Mapping[str, Path],
    skipped: Mapping[str, str],
) -> None:
    """Write a readable summary with the varied settings, the objectives, and the probe, MI and time metrics."""
    varying = _varying_params(rows)
    if SEED_PARAM not in varying:
        varying.append(SEED_PARAM)
    constant = {
        name: rows[0].params[name]
        for name in sorted({n for row in rows for n in row.params} - set(varying) - {"trial_id"})
        if name in rows[0].params and _read_by_some_trial(name, rows)
    } if rows else {}
    objective_names = [metric for metric, _ in objectives]
    table_metrics = objective_names + sorted(
        {name for row in rows for name in row.metrics if name.startswith(_MARKDOWN_METRIC_PREFIXES)}
        - set(objective_names)
    )
    multi = len(objectives) > 1
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row.status] += 1

    lines = [
        f"# Study {study_name}",
        "",
        f"MLflow experiment `{experiment_name}`, parent run `{parent_run_id}`: {len(rows)} trials "
        f"({', '.join(f'{n} {status}' for status, n in sorted(counts.items())) or 'none'}).",
    ]
    if objectives:
        lines.append("Objectives: " + ", ".join(f"`{metric}` ({mode})" for metric, mode in objectives) + ".")
    if constant:
        lines.append("Settings shared by every trial: " + ", ".join(f"`{k}={v}`" for k, v in constant.items()) + ".")
    lines += [
        "",
        "Metrics are the latest value of each run: probe accuracies in [0, 1], MI bounds in nats, "
        f"times in seconds. `{RESULTS_CSV}` holds every parameter and metric.",
        "",
    ]

    header = ["trial", "status"] + (["Pareto"] if multi else []) + varying + table_metrics
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [row.trial_id or row.run_id[:8], row.status]
        if multi:
            cells.append("yes" if row.pareto_optimal else "")
        cells += [row.params.get(name, "") for name in varying]
        cells += [_format_number(row.metrics.get(name)) for name in table_metrics]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")

    failed = [row for row in rows if row.error]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- `{row.trial_id}` ({row.status}): {row.error.splitlines()[0][:300]}" for row in failed]
    lines += ["", "## Figures", ""]
    lines += [f"- `{name}`" for name in figures]
    lines += [f"- `{name}` skipped: {reason}" for name, reason in skipped.items()]
    path.write_text("\n".join(lines) + "\n")


def _read_by_some_trial(param: str, rows: Sequence[TrialRow]) -> bool:
    """Return whether some trial's method reads ``param``: the other methods' sections are noise.

    Step-2 settings count only where step 2 ran, and a setting logged as null (a penalty's own
    setting on a trial with another penalty) never counts.
    """
    if all(row.params.get(param) in ("null", "None") for row in rows):
        return False
    readers = method_readers(param)
    if readers is not None and not any(_method_name(row) in readers for row in rows):
        return False
    if param.startswith("step2.") and param != "step2.enabled":
        return any(row.params.get("step2.enabled") != "False" for row in rows)
    return True


def _format_number(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


# --------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spread:
    """Mean and min-max range of one metric over the seeds of one setting."""

    mean: float
    low: float
    high: float
    count: int


def _spread(values: Iterable[float]) -> _Spread:
    array = np.asarray(list(values), dtype=float)
    return _Spread(float(array.mean()), float(array.min()), float(array.max()), int(array.size))


def _group_spreads(
    rows: Iterable[TrialRow], key: Callable[[TrialRow], Any], metric: str
) -> dict[Any, _Spread]:
    """Average ``metric`` over FINISHED rows grouped by ``key``, leaving out rows without the metric."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for row in rows:
        value = row.metric(metric)
        if row.finished and value is not None:
            groups[key(row)].append(value)
    return {group: _spread(values) for group, values in groups.items()}


def _method_name(row: TrialRow) -> str:
    for name in METHOD_NAME_PARAMS:
        if name in row.params:
            return row.params[name]
    return DEFAULT_METHOD_NAME


def _beta_rows(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Return the DisentangledSSL trials: only their step-1 model is trained with ``step1.beta``.

    The baselines log the study's ``step1.beta`` too, but their training does not use it, so they
    are left out of the plots against beta.
    """
    return [row for row in rows if _method_name(row) == DEFAULT_METHOD_NAME]


def _lambda(row: TrialRow) -> float | None:
    for name in LAMBDA_PARAMS:
        if name in row.params:
            return row.param_float(name)
    return None


def _betas(rows: Sequence[TrialRow]) -> list[float]:
    return sorted({beta for row in rows if row.finished and (beta := row.param_float(BETA_PARAM)) is not None})


def _beta_scale(rows: Sequence[TrialRow]) -> str | None:
    """Return ``cosine`` or ``kl`` when every finished trial uses that penalty scale, else ``None``."""
    scales = {row.params.get(PENALTY_PARAM) for row in rows if row.finished}
    return scales.pop() if len(scales) == 1 and None not in scales else None


def _beta_not_varied(betas: Sequence[float]) -> str:
    return f"{BETA_PARAM} is not varied across FINISHED trials (values: {[_format_beta(b) for b in betas]})"


def _format_beta(beta: float) -> str:
    return "0" if beta == 0 else f"{beta:g}"


def _count_note(spreads: Iterable[_Spread]) -> str:
    counts = sorted({spread.count for spread in spreads})
    trials = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean over {trials} FINISHED trial(s) per point, error bars span min to max"


def _titles(figure: Figure, axes: Axes, title: str, subtitle: str) -> None:
    figure.suptitle(title)
    axes.set_title(subtitle, fontsize="small")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _write_figures(
    rows: Sequence[TrialRow], objectives: Sequence[tuple[str, str]], folder: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every figure that applies, and remove stale copies of skipped ones from ``folder``."""
    builders: dict[str, Callable[[], Figure]] = {
        FIGURE_4A: lambda: _figure_4a(rows),
        FIGURE_4B: lambda: _figure_4b(rows),
        INFORMATION_PLANE: lambda: _information_plane(rows),
        PARETO_FRONT: lambda: _pareto_front(rows, objectives),
    }
    figures: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        path = folder / name
        try:
            figure = build()
        except _FigureSkipped as reason:
            skipped[name] = str(reason)
            logger.info("report: %s skipped: %s", name, reason)
            if path.is_file():
                path.unlink()
                logger.info("report: removed %s left by an earlier report", path)
            continue
        FigureCanvasAgg(figure)
        figure.savefig(path, dpi=120)
        figures[name] = path
    return figures, skipped


def _new_figure(width: float = 7.0, height: float = 5.0) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _finished_with(rows: Sequence[TrialRow], metrics: Sequence[str]) -> list[TrialRow]:
    return [row for row in rows if row.finished and all(row.metric(m) is not None for m in metrics)]


def _missing_metrics_reason(rows: Sequence[TrialRow], metrics: Sequence[str], prefix: str, hint: str) -> str:
    present = sorted({name for row in rows if row.finished for name in row.metrics if name.startswith(prefix)})
    found = ", ".join(present) if present else "none"
    return f"no FINISHED trial has {' and '.join(metrics)} ({hint}; {prefix} metrics found: {found})"


def _figure_4a(rows: Sequence[TrialRow]) -> Figure:
    """Plot shared probe accuracy on Yc, Y1 and Y2 against beta, with beta 0 in a panel left of the log axis."""
    metrics = list(SHARED_LABEL_METRICS.values())
    rows = _beta_rows(rows)
    usable = [row for row in rows if row.finished and any(row.metric(m) is not None for m in metrics)]
    if not usable:
        raise _FigureSkipped(_missing_metrics_reason(rows, metrics[:1], "probe/shared/", "a dataset without y_c"))
    betas = _betas(usable)
    if len(betas) < 2:
        raise _FigureSkipped(_beta_not_varied(betas))

    positive = [beta for beta in betas if beta > 0]
    figure = _new_figure(8.0, 5.0)
    if 0.0 in betas and positive:
        zero_axes, axes = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 7]})
    elif positive:
        zero_axes, axes = None, figure.subplots()
    else:
        raise _FigureSkipped(f"{BETA_PARAM} takes no positive value, so there is no log axis to plot on")

    scale = _beta_scale(usable)
    all_spreads: list[_Spread] = []
    # NOTE: trials are grouped by beta alone. A study that also varies another step-1 setting
    # (temperature, embed_dim, ...) pools those trials into one point per beta.
    for (label, metric), color in zip(SHARED_LABEL_METRICS.items(), _LABEL_COLORS):
        spreads = _group_spreads(usable, lambda row: row.param_float(BETA_PARAM), metric)
        all_spreads += spreads.values()
        xs = [beta for beta in positive if beta in spreads]
        _errorbar(axes, xs, [spreads[b] for b in xs], color, label)
        if zero_axes is not None and 0.0 in spreads:
            _errorbar(zero_axes, [0.0], [spreads[0.0]], color, None)
        if scale == "cosine":
            reference = PAPER_FIGURE_4A[metric]
            axes.plot(
                list(reference), list(reference.values()), linestyle="none", marker="D", markersize=6,
                markerfacecolor="none", markeredgecolor=color, alpha=0.8,
            )  # fmt: skip
    if scale == "cosine":
        axes.plot([], [], linestyle="none", marker="D", markerfacecolor="none", markeredgecolor="grey",
                  label=f"{PAPER_SOURCE}, Figure 4a (read off)")  # fmt: skip
    else:
        logger.info(
            "report: %s drawn without the paper's values, which are on the cosine beta scale (study scale: %s)",
            FIGURE_4A,
            scale,
        )

    axes.set_xscale("log")
    axes.set_xlabel(f"β ({BETA_PARAM}, {scale or 'mixed or unrecorded'} scale, log axis)")
    axes.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    main_axes = axes
    if zero_axes is not None:
        zero_axes.set_xticks([0.0], ["0"])
        zero_axes.set_xlim(-1.0, 1.0)
        zero_axes.set_xlabel("β = 0")
        zero_axes.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        zero_axes.grid(True, alpha=0.3)
        main_axes = zero_axes
        axes.tick_params(labelleft=False)
    main_axes.set_ylabel("linear-probe test accuracy (fraction)")
    _titles(figure, axes, "Shared representation after step 1: probe accuracy against β", _count_note(all_spreads))
    return figure


def _errorbar(axes: Axes, xs: Sequence[float], spreads: Sequence[_Spread], color: str, label: str | None) -> None:
    if not xs:
        return
    means = np.array([s.mean for s in spreads])
    errors = np.array([[s.mean - s.low for s in spreads], [s.high - s.mean for s in spreads]])
    axes.errorbar(xs, means, yerr=errors, color=color, marker="o", capsize=3, label=label)


def _figure_4b(rows: Sequence[TrialRow]) -> Figure:
    """Plot X1-specific accuracy on Y1 against accuracy on Yc, one curve per (method, beta) over lambda."""
    metrics = [SPECIFIC1_Y1, SPECIFIC1_YC]
    usable = _finished_with(rows, metrics)
    if not usable:
        hint = "step 2 disabled, or a dataset without y_1 and y_c"
        raise _FigureSkipped(_missing_metrics_reason(rows, metrics, "probe/specific1/", hint))

    def group(row: TrialRow) -> tuple[str, float | None, float | None]:
        method = _method_name(row)
        if method == DEFAULT_METHOD_NAME:
            return (method, row.param_float(BETA_PARAM), _lambda(row))
        # A baseline's curve runs over its own trade-off weight a; beta does not apply to it.
        return (method, None, row.param_float(f"{method}.a"))

    on_y1 = _group_spreads(usable, group, SPECIFIC1_Y1)
    on_yc = _group_spreads(usable, group, SPECIFIC1_YC)
    curves: dict[tuple[str, float | None], list[float | None]] = defaultdict(list)
    for method, beta, lam in on_y1:
        curves[(method, beta)].append(lam)

    figure = _new_figure(7.5, 6.5)
    axes = figure.subplots()
    extent = _extent([s.mean for s in on_yc.values()], [s.mean for s in on_y1.values()])
    ordered = sorted(curves.items(), key=lambda item: _sortable_tuple(item[0]))
    for index, ((method, beta), lambdas) in enumerate(ordered):
        lambdas.sort(key=lambda lam: -math.inf if lam is None else lam)
        keys = [(method, beta, lam) for lam in lambdas]
        xs = [on_yc[k] for k in keys]
        ys = [on_y1[k] for k in keys]
        color = f"C{index % 10}"
        symbol = "λ" if method == DEFAULT_METHOD_NAME else "a"
        if method != DEFAULT_METHOD_NAME:
            beta_text = "over a"
        else:
            beta_text = "β unknown" if beta is None else f"β = {_format_beta(beta)}"
        axes.errorbar(
            [s.mean for s in xs], [s.mean for s in ys],
            xerr=[[s.mean - s.low for s in xs], [s.high - s.mean for s in xs]],
            yerr=[[s.mean - s.low for s in ys], [s.high - s.mean for s in ys]],
            color=color, marker="o", capsize=3, label=f"{method}, {beta_text}",
        )  # fmt: skip
        labelled = [(lam, x.mean, y.mean) for lam, x, y in zip(lambdas, xs, ys) if lam is not None]
        if labelled:
            lams, means_x, means_y = zip(*labelled)
            labels = [f"{lam:g}" for lam in lams]
            _annotate_groups(axes, means_x, means_y, labels, symbol, extent, color=color, fontsize=7)

    if all(row.params.get("data.kind") == "synthetic" for row in usable):
        front_x, front_y = zip(*PAPER_FIGURE_4B_FRONT)
        axes.plot(front_x, front_y, color="grey", linestyle="--", marker="D", markerfacecolor="none",
                  label=f"{PAPER_SOURCE}, Figure 4b front, β 0.01 or 0.1 (read off)")  # fmt: skip
    axes.set_xlabel(f"accuracy on Yc, the shared label (fraction; {SPECIFIC1_YC})\nlower is better")
    axes.set_ylabel(f"accuracy on Y1, the X1-specific label\n(fraction; {SPECIFIC1_Y1}), higher is better")
    axes.grid(True, alpha=0.3)
    axes.margins(0.08)
    # Below the axes, where the legend cannot hide a curve or the paper's front.
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    count_note = _count_note([*on_y1.values(), *on_yc.values()])
    subtitle = f"one curve per method and β, points in increasing λ (baselines: in increasing a)\n{count_note}"
    _titles(figure, axes, "X1-specific representation after step 2", subtitle)
    return figure


def _information_plane(rows: Sequence[TrialRow]) -> Figure:
    """Plot the I(Z; X2) lower bound against the I(Z; X1 | X2) upper bound, one point per beta, in beta order."""
    metrics = [CMI_UPPER, SHARED_MI_LOWER]
    rows = _beta_rows(rows)
    usable = _finished_with(rows, metrics)
    if not usable:
        raise _FigureSkipped(_missing_metrics_reason(rows, metrics, "mi/", "step-1 diagnostics were not logged"))
    betas = _betas(usable)
    if len(betas) < 2:
        raise _FigureSkipped(_beta_not_varied(betas))

    def by_beta(row: TrialRow) -> float | None:
        return row.param_float(BETA_PARAM)

    xs = _group_spreads(usable, by_beta, CMI_UPPER)
    ys = _group_spreads(usable, by_beta, SHARED_MI_LOWER)
    figure = _new_figure()
    axes = figure.subplots()
    points_x = [xs[b] for b in betas]
    points_y = [ys[b] for b in betas]
    axes.plot([p.mean for p in points_x], [p.mean for p in points_y], color="grey", linewidth=1, zorder=1)
    axes.errorbar(
        [p.mean for p in points_x], [p.mean for p in points_y],
        xerr=[[p.mean - p.low for p in points_x], [p.high - p.mean for p in points_x]],
        yerr=[[p.mean - p.low for p in points_y], [p.high - p.mean for p in points_y]],
        linestyle="none", color="grey", capsize=2, zorder=2,
    )  # fmt: skip
    # Each point is labelled with its beta, so beta = 0 needs no place on a log color scale.
    means_x = [p.mean for p in points_x]
    means_y = [p.mean for p in points_y]
    axes.scatter(means_x, means_y, color="C0", zorder=3, label="mean over the trials of one β")
    # Neighbouring betas often land on one spot (the plateau at small beta, the collapse at large
    # beta), so such points share one label, and successive labels alternate above and below.
    labels = [_format_beta(beta) for beta in betas]
    _annotate_groups(axes, means_x, means_y, labels, "β", color="black", fontsize=8)
    axes.set_xlabel(f"I(Z; X1 | X2) upper bound: held-out E KL (nats; {CMI_UPPER})")
    axes.set_ylabel(f"I(Z; X2) lower bound: log B − InfoNCE\n(nats; {SHARED_MI_LOWER})")
    axes.grid(True, alpha=0.3)
    axes.margins(0.08)
    axes.legend(loc="best", fontsize="small")
    subtitle = f"points joined in increasing β; {_count_note([*points_x, *points_y])}"
    _titles(figure, axes, "Information plane of the shared representation", subtitle)
    return figure


_Extent = tuple[float, float, float, float]


def _extent(xs: Sequence[float], ys: Sequence[float]) -> _Extent:
    """Return ``(x low, x high, y low, y high)`` of the points."""
    return (min(xs), max(xs), min(ys), max(ys))


def _annotate_groups(
    axes: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str],
    symbol: str,
    extent: _Extent | None = None,
    **text: Any,
) -> None:
    """Label points that follow a curve, giving neighbouring points one shared label.

    Successive labels alternate above and below their point. Labels in the right half of
    ``extent`` sit to the left of their point, so that none runs off the axes. ``extent`` should
    span every plotted point, and defaults to the span of these points.
    """
    extent = extent or _extent(xs, ys)
    middle = (extent[0] + extent[1]) / 2
    for index, (first, group) in enumerate(_nearby_groups(xs, ys, extent)):
        label = f"{symbol}=" + ", ".join(labels[member] for member in group)
        right_half = xs[first] > middle
        offset = (-5 if right_half else 5, 4 if index % 2 == 0 else -11)
        axes.annotate(
            label, (xs[first], ys[first]), textcoords="offset points", xytext=offset,
            ha="right" if right_half else "left", **text,
        )  # fmt: skip


def _nearby_groups(
    xs: Sequence[float], ys: Sequence[float], extent: _Extent, radius: float = 0.06
) -> list[tuple[int, list[int]]]:
    """Group consecutive points that lie within ``radius`` of their group's first point.

    Distances are measured after scaling each axis by the width and height of ``extent``, so
    ``radius`` is a share of the plotted extent.

    Returns:
        ``(first index, member indices)`` per group, in the points' order.
    """
    span_x = (extent[1] - extent[0]) or 1.0
    span_y = (extent[3] - extent[2]) or 1.0
    groups: list[tuple[int, list[int]]] = []
    for index, (x, y) in enumerate(zip(xs, ys)):
        if groups:
            first = groups[-1][0]
            if math.hypot((x - xs[first]) / span_x, (y - ys[first]) / span_y) <= radius:
                groups[-1][1].append(index)
                continue
        groups.append((index, [index]))
    return groups


def _pareto_front(rows: Sequence[TrialRow], objectives: Sequence[tuple[str, str]]) -> Figure:
    """Plot the first two objectives of every FINISHED trial and highlight the Pareto-optimal ones."""
    if len(objectives) < 2:
        described = ", ".join(metric for metric, _ in objectives) or "none recorded on the parent run"
        raise _FigureSkipped(f"single-objective study (metric: {described}), so there is no Pareto front")
    (x_metric, x_mode), (y_metric, y_mode) = objectives[0], objectives[1]
    usable = _finished_with(rows, [metric for metric, _ in objectives])
    if not usable:
        raise _FigureSkipped(f"no FINISHED trial has every objective ({', '.join(m for m, _ in objectives)})")

    optimal = [row for row in usable if row.pareto_optimal]
    others = [row for row in usable if not row.pareto_optimal]
    figure = _new_figure()
    axes = figure.subplots()
    axes.scatter(
        [r.metric(x_metric) for r in others],
        [r.metric(y_metric) for r in others],
        color="grey",
        alpha=0.6,
        label="dominated trial",
    )
    front = sorted(optimal, key=lambda r: (r.metric(x_metric), r.metric(y_metric)))
    axes.plot(
        [r.metric(x_metric) for r in front], [r.metric(y_metric) for r in front],
        color="C3", marker="o", linestyle="--" if len(objectives) == 2 else "none", label="Pareto-optimal trial",
    )  # fmt: skip
    for row in front:
        axes.annotate(row.trial_id or row.run_id[:8], (row.metric(x_metric), row.metric(y_metric)),
                      textcoords="offset points", xytext=(5, 4), fontsize=7)  # fmt: skip
    axes.set_xlabel(f"{x_metric} ({_unit(x_metric)}), {_mode_text(x_mode)}")
    axes.set_ylabel(f"{y_metric} ({_unit(y_metric)}), {_mode_text(y_mode)}")
    axes.grid(True, alpha=0.3)
    axes.margins(0.08)
    axes.legend(loc="best", fontsize="small")
    subtitle = f"one point per FINISHED trial ({len(usable)}); Pareto-optimal trials are labelled with their trial id"
    if len(objectives) > 2:
        subtitle += f"\nthe front is over all {len(objectives)} objectives; the first two are shown"
    _titles(figure, axes, "Pareto front of the study's objectives", subtitle)
    return figure


def _unit(metric: str) -> str:
    if metric.startswith("probe/"):
        return "test accuracy, fraction"
    if metric.startswith("r2/"):
        return "R²"
    if metric.startswith("time/"):
        return "seconds"
    if metric.endswith("samples_per_second"):
        return "rows per second"
    if metric.startswith("mi/") or "infonce" in metric or metric.endswith("/loss"):
        return "nats"
    return "as logged"


def _mode_text(mode: str) -> str:
    return "maximised" if mode == "max" else "minimised"


# --------------------------------------------------------------------------------------------
# Value helpers
# --------------------------------------------------------------------------------------------


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _sortable(value: Any) -> tuple[int, float, str]:
    """Order numbers numerically before strings, and missing values last."""
    if value is None:
        return (2, 0.0, "")
    number = _as_float(str(value))
    if number is not None:
        return (0, number, "")
    return (1, 0.0, str(value))


def _sortable_tuple(values: Iterable[Any]) -> tuple[tuple[int, float, str], ...]:
    return tuple(_sortable(value) for value in values)
