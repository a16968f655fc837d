"""The ``dssl`` command: validate and run studies, and report their results.

Exit status: 0 on success, 2 for an invalid study file or argument (nothing was started),
1 when a study ran but some trials failed or the run itself failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dssl.study.schema import StudyValidationError, load_study

logger = logging.getLogger("dssl")

EXIT_INVALID_INPUT = 2


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dssl",
        description="Hyperparameter studies of DisentangledSSL on Ray Tune, Ray Train, Optuna and MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a study file against the schema and exit")
    validate.add_argument("study", help="path of the study YAML file")

    run = commands.add_parser("run", help="run a study: one MLflow parent run, one child run per trial")
    run.add_argument("study", help="path of the study YAML file")
    run.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    run.add_argument(
        "--storage-path",
        default=None,
        help="folder for Tune results, checkpoints and the Optuna database "
        "(default: $DSSL_STORAGE_PATH, else ./dssl_results)",
    )

    report = commands.add_parser(
        "report", help="write a study's results table and figures and log them to its MLflow parent run"
    )
    report.add_argument("study", help="path of the study YAML file, or the study name")
    report.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI the study ran with (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    report.add_argument("--out", default=None, help="output folder (default: reports/<study name>/)")
    report.add_argument(
        "--parent-run-id", default=None, help="MLflow parent run to report (default: the study's latest)"
    )
    return parser


def _report(study: str, tracking_uri: str | None, out: str | None, parent_run_id: str | None) -> int:
    from dssl.study.report import ReportInputError, build_report

    try:
        result = build_report(study, tracking_uri, out, parent_run_id=parent_run_id)
    except ReportInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    print(f"Report of study {result.study_name!r}, parent run {result.parent_run_id}: {len(result.rows)} trials")
    for path in (result.table_csv, result.table_markdown, *result.figures.values()):
        print(f"  wrote {path}")
    for name, reason in result.skipped.items():
        print(f"  {name} skipped: {reason}")
    print(f"Logged to the parent run's artifacts under {result.artifact_path}/")
    return 0


def _validate(path: str) -> int:
    spec = load_study(path)
    from dssl.study.space import grid_size

    trials = grid_size(spec) if spec.search.algorithm == "grid" else spec.search.num_trials
    print(
        f"{path}: valid study {spec.name!r}: {trials} trials, algorithm {spec.search.algorithm}, "
        f"{spec.resources.num_workers} worker(s) per trial"
    )
    return 0


def _run(path: str, tracking_uri: str | None, storage_path: str | None) -> int:
    from dssl.study.runner import run_study

    outcome = run_study(path, tracking_uri=tracking_uri, storage_path=storage_path)
    print()
    print(f"Study {outcome.name!r} finished: {outcome.trials} trials, {outcome.errors} failed.")
    if outcome.best_config is not None:
        print(f"Best trial config: {outcome.best_config}")
        for name, value in sorted((outcome.best_metrics or {}).items()):
            print(f"  {name:<28} {value:.4f}")
    print(f"MLflow: experiment {outcome.experiment_name!r}, parent run {outcome.parent_run_id}")
    print(f"  browse: mlflow ui --backend-store-uri {outcome.tracking_uri} --host 127.0.0.1")
    print(f"Optuna: optuna-dashboard {outcome.optuna_storage}")
    print(f"Tune results and checkpoints: {outcome.results_path}")
    return 0 if outcome.errors == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dssl`` command line and return its exit status."""
    args = _build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "validate":
            return _validate(args.study)
        if args.command == "run":
            return _run(args.study, args.tracking_uri, args.storage_path)
        if args.command == "report":
            return _report(args.study, args.tracking_uri, args.out, args.parent_run_id)
    except StudyValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except ValueError as error:
        from dssl.study.runner import InvalidStudyInputError

        if not isinstance(error, InvalidStudyInputError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    return EXIT_INVALID_INPUT


if __name__ == "__main__":
    sys.exit(main())
