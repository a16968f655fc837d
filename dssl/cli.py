"""The ``dssl`` command: validate and run studies, report their results, and write datasets.

Exit status: 0 on success, 2 for an invalid study file or argument (nothing was started),
1 when a study ran but some trials failed or the run itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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
        help="folder or pyarrow.fs URI (s3://, gs://) for Tune results, checkpoints and the Optuna "
        "database (default: $DSSL_STORAGE_PATH, else ./dssl_results)",
    )
    _add_shared_storage(run)

    resume = commands.add_parser(
        "resume", help="finish a study whose driver stopped, from its folder under the storage path"
    )
    resume.add_argument("study_dir", help="the study's folder, <storage path>/<study name>-<date>-<time>")
    resume.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: the one the study started with, which is stored without credentials)",
    )
    _add_shared_storage(resume)

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
    _add_data_commands(commands)
    return parser


def _add_shared_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="the storage folder and a SQLite MLflow store lie on storage every node mounts (NFS); "
        "without it, a multi-node cluster rejects local paths (also: DSSL_SHARED_STORAGE=1)",
    )


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``dssl data {synthetic,digits,validate,convert}``: write, convert and check Parquet datasets."""
    data = commands.add_parser("data", help="write, convert and validate datasets in the Parquet format")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def add_output(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=True, help="output folder; receives the Parquet files and dataset.yaml")
        parser.add_argument(
            "--layout",
            choices=("list", "columns"),
            default="list",
            help="features as one fixed-size list column per modality (default) or one column per feature",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    synthetic = actions.add_parser(
        "synthetic", help="write the paper's synthetic benchmark (settings as under data: in a study)"
    )
    synthetic.add_argument("--n-samples", type=int, default=90000)
    synthetic.add_argument("--latent-dim", type=int, default=50)
    synthetic.add_argument("--x-dim", type=int, default=100)
    synthetic.add_argument("--latent-variance", type=float, default=0.5)
    synthetic.add_argument("--regime", default="reference", help="reference, attainable or unattainable")
    synthetic.add_argument("--relative-noise-std", type=float, default=None)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--test-fraction", type=float, default=0.2)
    add_output(synthetic)

    digits = actions.add_parser(
        "digits", help="write scikit-learn's 8x8 digits as two views, the left and right image halves"
    )
    digits.add_argument("--seed", type=int, default=0, help="seed of the stratified train/test split")
    digits.add_argument("--test-fraction", type=float, default=0.2)
    add_output(digits)

    validate = actions.add_parser("validate", help="check a dataset manifest and its Parquet files")
    validate.add_argument("manifest", help="path of dataset.yaml")

    convert = actions.add_parser("convert", help="convert a .npz, CSV or SMILES table into the Parquet format")
    formats = convert.add_subparsers(dest="convert_format", required=True, metavar="FORMAT")

    def add_table_options(parser: argparse.ArgumentParser, modalities: tuple[str, str]) -> None:
        parser.add_argument("--label", action="append", default=[], dest="labels", help="a label column (repeatable)")
        parser.add_argument("--id-column", default=None, help="sample id column (default: row numbers)")
        parser.add_argument("--split-column", default=None, help="column of 'train'/'test' values (default: a random split)")
        parser.add_argument(
            "--modality-names", nargs=2, default=modalities, metavar=("X1", "X2"), help="names of the two modalities"
        )
        parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of a random split")
        parser.add_argument("--seed", type=int, default=0, help="seed of a random split")
        add_output(parser)

    npz = formats.add_parser("npz", help="arrays in a NumPy .npz file")
    npz.add_argument("file")
    npz.add_argument("--x1-key", default="x1")
    npz.add_argument("--x2-key", default="x2")
    npz.add_argument("--label", action="append", default=[], dest="labels", help="a label array (repeatable)")
    npz.add_argument("--id-key", default=None)
    npz.add_argument("--split-key", default=None)
    npz.add_argument("--modality-names", nargs=2, default=("x1", "x2"), metavar=("X1", "X2"))
    npz.add_argument("--test-fraction", type=float, default=0.2)
    npz.add_argument("--seed", type=int, default=0)
    add_output(npz)

    csv = formats.add_parser("csv", help="a CSV file whose feature columns share a prefix per modality")
    csv.add_argument("file")
    csv.add_argument("--x1-prefix", required=True, help="prefix of the first modality's feature columns")
    csv.add_argument("--x2-prefix", required=True, help="prefix of the second modality's feature columns")
    add_table_options(csv, ("x1", "x2"))

    smiles = formats.add_parser(
        "smiles", help="a CSV of phenotype profiles and the SMILES of the perturbing molecule (Morgan fingerprints)"
    )
    smiles.add_argument("file")
    smiles.add_argument("--smiles-column", required=True)
    smiles.add_argument("--profile-prefix", required=True, help="prefix of the profile feature columns")
    smiles.add_argument("--radius", type=int, default=2, help="Morgan radius (default 2)")
    smiles.add_argument("--n-bits", type=int, default=2048, help="fingerprint length (default 2048)")
    add_table_options(smiles, ("profile", "molecule"))


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


def _data(args: argparse.Namespace) -> int:
    from dssl.data.parquet import DatasetValidationError

    try:
        return _data_action(args)
    except DatasetValidationError as error:
        raise _DataInputError(str(error)) from None


def _data_action(args: argparse.Namespace) -> int:
    from dssl.data import parquet

    if args.data_command == "validate":
        summary = parquet.validate_dataset(args.manifest)
        print(f"{args.manifest}: valid dataset")
        print(summary)
        return 0
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise _DataInputError(f"--out {args.out!r} is not empty; choose an empty folder or pass --overwrite")
    if args.data_command == "synthetic":
        manifest = _write_synthetic(args)
    elif args.data_command == "digits":
        manifest = _write_digits(args)
    else:
        manifest = _convert(args)
    print(f"wrote {manifest}")
    print(parquet.validate_dataset(manifest))
    return 0


class _DataInputError(ValueError):
    """A ``dssl data`` argument that cannot be used; the message names it and the fix."""


def _write_synthetic(args: argparse.Namespace) -> Path:
    from pydantic import ValidationError

    from dssl.data.parquet import write_paired_dataset
    from dssl.data.synthetic import make_synthetic
    from dssl.study.schema import SyntheticDataSpec, _problems_from_error

    options = {
        "n_samples": args.n_samples,
        "latent_dim": args.latent_dim,
        "x_dim": args.x_dim,
        "latent_variance": args.latent_variance,
        "regime": args.regime,
        "relative_noise_std": args.relative_noise_std,
        "seed": args.seed,
        "test_fraction": args.test_fraction,
    }
    try:
        spec = SyntheticDataSpec.model_validate({key: value for key, value in options.items() if value is not None})
    except ValidationError as error:
        # Each problem names the field; shown as the option that sets it (n_samples -> --n-samples).
        problems = []
        for problem in _problems_from_error(error):
            option = "--" + problem.field.split(".")[0].replace("_", "-")
            renamed = dataclasses.replace(problem, field=option)
            problems.append(renamed.render())
        raise _DataInputError("invalid synthetic settings:\n  " + "\n  ".join(problems)) from None
    dataset = make_synthetic(**spec.model_dump(exclude={"kind"}))
    return write_paired_dataset(dataset, args.out, layout=args.layout)


def _convert(args: argparse.Namespace) -> Path:
    from dssl.data import convert

    common = {
        "layout": args.layout,
        "overwrite": args.overwrite,
        "test_fraction": args.test_fraction,
        "seed": args.seed,
        "modality_names": tuple(args.modality_names),
    }
    try:
        if args.convert_format == "npz":
            return convert.convert_npz(
                args.file, args.out, x1_key=args.x1_key, x2_key=args.x2_key, label_keys=args.labels,
                id_key=args.id_key, split_key=args.split_key, **common,
            )  # fmt: skip
        table = {"label_columns": args.labels, "id_column": args.id_column, "split_column": args.split_column}
        if args.convert_format == "csv":
            return convert.convert_csv(args.file, args.out, x1_prefix=args.x1_prefix, x2_prefix=args.x2_prefix, **table, **common)
        profile, molecule = common.pop("modality_names")
        return convert.convert_smiles_table(
            args.file, args.out, smiles_column=args.smiles_column, x1_prefix=args.profile_prefix,
            radius=args.radius, n_bits=args.n_bits, profile_modality=profile, molecule_modality=molecule,
            **table, **common,
        )  # fmt: skip
    except convert.ConversionError as error:
        raise _DataInputError(str(error)) from None


def _write_digits(args: argparse.Namespace) -> Path:
    from dssl.data.digits import make_digits_two_view
    from dssl.data.parquet import write_paired_dataset

    if not 0.0 < args.test_fraction < 1.0:
        raise _DataInputError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    dataset = make_digits_two_view(test_fraction=args.test_fraction, seed=args.seed)
    return write_paired_dataset(dataset, args.out, modality_names=("left", "right"), layout=args.layout)


def _count(number: int, noun: str) -> str:
    """Return ``"1 trial"`` or ``"3 trials"``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _validate(path: str) -> int:
    spec = load_study(path)
    from dssl.study.space import grid_size

    trials = grid_size(spec) if spec.search.algorithm == "grid" else spec.search.num_trials
    print(
        f"{path}: valid study {spec.name!r}: {_count(trials, 'trial')}, algorithm {spec.search.algorithm}, "
        f"{spec.resources.num_workers} worker(s) per trial"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from dssl.study.runner import resume_study, run_study
    from dssl.study.storage import redact_uri

    if args.command == "resume":
        outcome = resume_study(args.study_dir, tracking_uri=args.tracking_uri, shared_storage=args.shared_storage)
    else:
        outcome = run_study(
            args.study,
            tracking_uri=args.tracking_uri,
            storage_path=args.storage_path,
            shared_storage=args.shared_storage,
        )
    print()
    print(f"Study {outcome.name!r} finished: {_count(outcome.trials, 'trial')}, {outcome.errors} failed.")
    if outcome.best_config is not None:
        print(f"Best trial config: {outcome.best_config}")
        for name, value in sorted((outcome.best_metrics or {}).items()):
            print(f"  {name:<28} {value:.4f}")
    print(f"MLflow: experiment {outcome.experiment_name!r}, parent run {outcome.parent_run_id}")
    print(f"  browse: mlflow ui --backend-store-uri {redact_uri(outcome.tracking_uri)} --host 127.0.0.1")
    if outcome.optuna_storage is not None:
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
        if args.command in ("run", "resume"):
            return _run(args)
        if args.command == "report":
            return _report(args.study, args.tracking_uri, args.out, args.parent_run_id)
        if args.command == "data":
            return _data(args)
    except StudyValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except _DataInputError as error:
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
