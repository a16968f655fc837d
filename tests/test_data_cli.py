"""``dssl data``: writing, converting and validating Parquet datasets, and studies that read them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dssl.data.digits import make_digits_two_view
from dssl.data.parquet import read_dataset
from dssl.data.synthetic import make_synthetic
from dssl.study.schema import StudyValidationError, load_study

REPO_ROOT = Path(__file__).resolve().parent.parent


def _dssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    return subprocess.run(
        [sys.executable, "-m", "dssl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_synthetic_written_equals_generator(tmp_path: Path) -> None:
    result = _dssl(
        "data", "synthetic", "--out", "synth", "--n-samples", "2000", "--latent-dim", "4", "--x-dim", "8",
        "--seed", "3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "synth/dataset.yaml" in result.stdout
    assert "2000 rows" in result.stdout

    read = read_dataset(tmp_path / "synth" / "dataset.yaml")
    expected = make_synthetic(n_samples=2000, latent_dim=4, x_dim=8, seed=3)
    np.testing.assert_array_equal(read.x1, expected.x1)
    np.testing.assert_array_equal(read.x2, expected.x2)
    for name in ("y_c", "y_1", "y_2"):
        np.testing.assert_array_equal(read.labels[name], expected.labels[name])
    for name in ("z_s", "z_1", "z_2"):
        np.testing.assert_array_equal(read.latents[name], expected.latents[name])
    np.testing.assert_array_equal(read.test_index, expected.test_index)


def test_synthetic_bad_setting_names_it(tmp_path: Path) -> None:
    result = _dssl("data", "synthetic", "--out", "s", "--n-samples", "10", cwd=tmp_path)
    assert result.returncode == 2
    assert "--n-samples: must be >= 1000 (got 10)" in result.stderr
    assert "1000" in result.stderr
    assert not (tmp_path / "s").exists()


def test_digits_columns_layout_and_refusal_to_overwrite(tmp_path: Path) -> None:
    result = _dssl("data", "digits", "--out", "d", "--layout", "columns", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load((tmp_path / "d" / "dataset.yaml").read_text())
    assert manifest["modalities"] == {"left": {"prefix": "left_", "dim": 32}, "right": {"prefix": "right_", "dim": 32}}
    read = read_dataset(tmp_path / "d" / "dataset.yaml")
    np.testing.assert_array_equal(read.x1, make_digits_two_view().x1)

    again = _dssl("data", "digits", "--out", "d", cwd=tmp_path)
    assert again.returncode == 2
    assert "--out 'd' is not empty" in again.stderr
    assert "--overwrite" in again.stderr


def test_validate_reports_file_column_and_row(tmp_path: Path) -> None:
    assert _dssl("data", "digits", "--out", "d", cwd=tmp_path).returncode == 0
    data = tmp_path / "d" / "data.parquet"
    table = pq.read_table(data)
    left = table.column("left").combine_chunks()
    values = left.values.to_numpy(zero_copy_only=False).copy()
    values[17 * 32 + 3] = np.nan
    broken = pa.FixedSizeListArray.from_arrays(pa.array(values, type=pa.float32()), 32)
    pq.write_table(table.set_column(table.schema.get_field_index("left"), "left", broken), data)

    result = _dssl("data", "validate", "d/dataset.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.parquet" in result.stderr
    assert "'left'" in result.stderr
    assert "row 17" in result.stderr
    assert "Traceback" not in result.stderr


def test_convert_csv_through_cli(tmp_path: Path) -> None:
    lines = ["id,a_0,a_1,b_0,label"] + [f"{i},{i}.5,{-i},{2 * i},{i % 2}" for i in range(12)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    result = _dssl(
        "data", "convert", "csv", "table.csv", "--x1-prefix", "a_", "--x2-prefix", "b_", "--label", "label",
        "--id-column", "id", "--out", "converted", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    read = read_dataset(tmp_path / "converted" / "dataset.yaml")
    np.testing.assert_array_equal(read.x1, np.array([[i + 0.5, -i] for i in range(12)], dtype=np.float32))
    np.testing.assert_array_equal(read.labels["label"], np.arange(12) % 2)

    bad = _dssl("data", "convert", "csv", "table.csv", "--x1-prefix", "zz_", "--x2-prefix", "b_", "--out", "o", cwd=tmp_path)
    assert bad.returncode == 2
    assert "zz_" in bad.stderr
    assert not (tmp_path / "o").exists()


def _parquet_study(tmp_path: Path, manifest: str) -> Path:
    study = {
        "name": "parquet-study",
        "data": {"kind": "parquet", "manifest": manifest},
        "method": {"hidden_dim": 16, "embed_dim": 4, "batch_size": 64, "step1": {"epochs": 1}, "step2": {"epochs": 1}},
        "search": {"algorithm": "random", "metric": "retrieval/x1_to_x2/mrr", "num_trials": 1},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_reads_manifest_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _dssl("data", "digits", "--out", "d", cwd=tmp_path).returncode == 0
    monkeypatch.chdir(tmp_path)
    spec = load_study(_parquet_study(tmp_path, "d/dataset.yaml"))
    assert spec.data.manifest == str(tmp_path / "d" / "dataset.yaml")

    study = yaml.safe_load((tmp_path / "study.yaml").read_text())
    study["search"]["metric"] = "probe/shared/y_c"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(StudyValidationError, match="probe/shared/digit"):
        load_study(tmp_path / "study.yaml")


def test_missing_manifest_rejected_before_anything(tmp_path: Path) -> None:
    path = _parquet_study(tmp_path, "nowhere/dataset.yaml")
    result = _dssl("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "data.manifest" in result.stderr
    assert "dssl data synthetic|digits|convert" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "dssl_results").exists()


def test_bad_data_file_stops_the_study_before_logging(tmp_path: Path) -> None:
    assert _dssl("data", "digits", "--out", "d", cwd=tmp_path).returncode == 0
    data = tmp_path / "d" / "data.parquet"
    table = pq.read_table(data)
    ids = table.column("sample_id").to_numpy().copy()
    ids[5] = ids[4]
    pq.write_table(table.set_column(table.schema.get_field_index("sample_id"), "sample_id", pa.array(ids)), data)

    result = _dssl("run", str(_parquet_study(tmp_path, "d/dataset.yaml")), cwd=tmp_path)
    assert result.returncode == 2
    assert "failed validation, so nothing was started" in result.stderr
    assert "sample_id" in result.stderr
    assert "dssl data validate MANIFEST" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "dssl_results").exists()
