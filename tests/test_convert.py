"""Tests of the .npz, CSV and SMILES converters into the Parquet dataset format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dssl.data.convert import (
    ConversionError,
    convert_csv,
    convert_npz,
    convert_smiles_table,
    smiles_to_morgan,
)
from dssl.data.manifest import load_manifest
from dssl.data.parquet import read_dataset

ETHANOL = "CCO"
BENZENE = "c1ccccc1"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _write_text(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists()
    leftovers = [entry.name for entry in out_dir.parent.iterdir() if entry.name.startswith(f".{out_dir.name}.")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------
# .npz


def _good_npz_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x1": rng.normal(size=(6, 3)).astype(np.float32),
        "x2": rng.normal(size=(6, 2)).astype(np.float32),
        "digit": np.array([3, 1, 3, 0, 1, 2], dtype=np.int64),
        "kind": np.array(["dog", "cat", "dog", "emu", "cat", "dog"]),
        "sample": np.array(["s0", "s1", "s2", "s3", "s4", "s5"]),
        "split": np.array(["train", "test", "train", "train", "test", "train"]),
    }


def test_npz_round_trip(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    npz = _write_npz(tmp_path / "pairs.npz", **arrays)
    out_dir = tmp_path / "out"

    manifest = convert_npz(
        npz, out_dir, label_keys=("digit", "kind"), id_key="sample", split_key="split", modality_names=("a", "b")
    )

    assert manifest == out_dir / "dataset.yaml"
    dataset = read_dataset(manifest)
    np.testing.assert_array_equal(dataset.x1, arrays["x1"])
    np.testing.assert_array_equal(dataset.x2, arrays["x2"])
    np.testing.assert_array_equal(dataset.labels["digit"], arrays["digit"])
    # String labels come back as codes in sorted order: cat=0, dog=1, emu=2.
    np.testing.assert_array_equal(dataset.labels["kind"], [1, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(dataset.train_index, [0, 2, 3, 5])
    np.testing.assert_array_equal(dataset.test_index, [1, 4])
    assert dataset.name == "pairs"
    assert list(load_manifest(manifest).modalities) == ["a", "b"]
    stored = pq.read_table(out_dir / "data.parquet", columns=["sample_id", "kind"]).to_pydict()
    assert stored["sample_id"] == arrays["sample"].tolist()
    assert stored["kind"] == arrays["kind"].tolist()


def test_npz_random_split_is_seeded(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    npz = _write_npz(tmp_path / "pairs.npz", x1=arrays["x1"], x2=arrays["x2"])

    first = read_dataset(convert_npz(npz, tmp_path / "a", test_fraction=0.5, seed=3))
    second = read_dataset(convert_npz(npz, tmp_path / "b", test_fraction=0.5, seed=3))

    assert first.test_index.size == 3
    assert np.intersect1d(first.train_index, first.test_index).size == 0
    np.testing.assert_array_equal(first.test_index, second.test_index)


def test_npz_numeric_casts_and_files(tmp_path: Path) -> None:
    x1 = np.arange(12, dtype=np.float64).reshape(4, 3) / 7.0
    x2 = np.arange(8, dtype=np.int32).reshape(4, 2)
    npz = _write_npz(tmp_path / "pairs.npz", x1=x1, x2=x2)

    manifest = convert_npz(npz, tmp_path / "out", layout="columns", test_fraction=0.25, rows_per_file=3)

    assert load_manifest(manifest).files == ["data-00000.parquet", "data-00001.parquet"]
    dataset = read_dataset(manifest)
    np.testing.assert_array_equal(dataset.x1, x1.astype(np.float32))
    np.testing.assert_array_equal(dataset.x2, x2.astype(np.float32))


def _npz_case(name: str) -> tuple[dict[str, np.ndarray], dict[str, object], list[str]]:
    """Return (arrays, converter options, substrings the error message must contain) for one bad input."""
    arrays = _good_npz_arrays()
    options: dict[str, object] = {}
    if name == "missing key":
        options = {"x2_key": "right"}
        expected = ["pairs.npz", "key 'right' not found", "'x1'", "'x2'", "'digit'"]
    elif name == "1-D modality":
        arrays["x1"] = np.zeros(6, dtype=np.float32)
        expected = ["pairs.npz", "key 'x1'", "2-D", "(6,)"]
    elif name == "row mismatch":
        arrays["x2"] = np.zeros((5, 2), dtype=np.float32)
        expected = ["key 'x1' has shape (6, 3)", "key 'x2' has shape (5, 2)"]
    elif name == "string modality":
        arrays["x2"] = np.full((6, 2), "a")
        expected = ["key 'x2'", "numeric", "<U1"]
    elif name == "non-finite value":
        arrays["x1"][4, 1] = np.nan
        expected = ["key 'x1'", "row index 4", "NaN or infinite"]
    elif name == "label length":
        arrays["digit"] = arrays["digit"][:5]
        options = {"label_keys": ("digit",)}
        expected = ["key 'digit'", "shape (6,)", "(5,)"]
    elif name == "fractional label":
        arrays["digit"] = np.array([0.0, 1.0, 1.5, 0.0, 1.0, 2.0])
        options = {"label_keys": ("digit",)}
        expected = ["key 'digit'", "row index 2", "1.5", "not an integer"]
    elif name == "invalid split value":
        arrays["split"] = np.array(["train", "test", "valid", "train", "test", "train"])
        options = {"split_key": "split"}
        expected = ["key 'split'", "row index 2", "'valid'", "['train', 'test']"]
    elif name == "split without train":
        arrays["split"] = np.full(6, "test")
        options = {"split_key": "split"}
        expected = ["key 'split'", "no row is 'train'", "at least one row in each split"]
    elif name == "split without test":
        arrays["split"] = np.full(6, "train")
        options = {"split_key": "split"}
        expected = ["key 'split'", "no row is 'test'", "at least one row in each split"]
    elif name == "duplicate id":
        arrays["sample"] = np.array(["s0", "s1", "s2", "s1", "s4", "s5"])
        options = {"id_key": "sample"}
        expected = ["key 'sample'", "id 's1' appears 2 times", "row index 1", "row index 3"]
    elif name == "object array":
        arrays["sample"] = np.array([1, "a", None, 2, 3, 4], dtype=object)
        options = {"id_key": "sample"}
        expected = ["key 'sample'", "pickle"]
    else:
        raise AssertionError(name)
    return arrays, options, expected


@pytest.mark.parametrize(
    "case",
    [
        "missing key",
        "1-D modality",
        "row mismatch",
        "string modality",
        "non-finite value",
        "label length",
        "fractional label",
        "invalid split value",
        "split without train",
        "split without test",
        "duplicate id",
        "object array",
    ],
)
def test_npz_bad_input_message(tmp_path: Path, case: str) -> None:
    arrays, options, expected = _npz_case(case)
    npz = _write_npz(tmp_path / "pairs.npz", **arrays)
    out_dir = tmp_path / "out"

    with pytest.raises(ConversionError) as caught:
        convert_npz(npz, out_dir, **options)

    message = str(caught.value)
    for fragment in expected:
        assert fragment in message
    _assert_nothing_written(out_dir)


def test_npz_rejects_non_empty_out_dir(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    npz = _write_npz(tmp_path / "pairs.npz", x1=arrays["x1"], x2=arrays["x2"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("user data")

    with pytest.raises(ConversionError, match="is not empty.*overwrite=True"):
        convert_npz(npz, out_dir)

    assert (out_dir / "keep.txt").read_text() == "user data"


def test_npz_overwrite_replaces_folder(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    npz = _write_npz(tmp_path / "pairs.npz", x1=arrays["x1"], x2=arrays["x2"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("old")

    manifest = convert_npz(npz, out_dir, overwrite=True)

    assert not (out_dir / "stale.txt").exists()
    np.testing.assert_array_equal(read_dataset(manifest).x1, arrays["x1"])


def test_npz_failed_overwrite_keeps_folder(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    npz = _write_npz(tmp_path / "pairs.npz", x1=arrays["x1"], x2=arrays["x2"][:3])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("user data")

    with pytest.raises(ConversionError, match="same number of rows"):
        convert_npz(npz, out_dir, overwrite=True)

    assert [entry.name for entry in out_dir.iterdir()] == ["keep.txt"]


def test_npz_overwrite_rejects_input_inside(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    npz = _write_npz(out_dir / "pairs.npz", x1=arrays["x1"], x2=arrays["x2"])

    with pytest.raises(ConversionError, match="inside out_dir"):
        convert_npz(npz, out_dir, overwrite=True)

    assert npz.exists()


def test_invalid_options_rejected(tmp_path: Path) -> None:
    arrays = _good_npz_arrays()
    npz = _write_npz(tmp_path / "pairs.npz", x1=arrays["x1"], x2=arrays["x2"])

    with pytest.raises(ConversionError, match=r"Invalid layout 'rows'. Expected one of \['list', 'columns'\]"):
        convert_npz(npz, tmp_path / "a", layout="rows")  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match=r"test_fraction must be a number in \(0, 1\), got 1.0"):
        convert_npz(npz, tmp_path / "b", test_fraction=1.0)
    with pytest.raises(ConversionError, match="single string 'digit'"):
        convert_npz(npz, tmp_path / "c", label_keys="digit")
    with pytest.raises(ConversionError, match="two different non-empty strings"):
        convert_npz(npz, tmp_path / "d", modality_names=("a", "a"))
    with pytest.raises(ConversionError, match="file not found"):
        convert_npz(tmp_path / "missing.npz", tmp_path / "e")


# ---------------------------------------------------------------------------------------------
# CSV

_GOOD_CSV = [
    "sample,left_b,left_a,digit,right_0,kind,right_1,split,note",
    "10,0.5,1.0,3,-2.0,dog,4e-3,train,first",
    "11,1.5,-1.0,1,2.25,cat,0,test,",
    "",
    '12,2.5,3,3,0.125,"dog",1e2,train,"multi',
    'line"',
    "13,-0.75,8.5,0,7,emu,-3.5,train,last",
]


def test_csv_round_trip(tmp_path: Path) -> None:
    csv_path = _write_text(tmp_path / "table.csv", _GOOD_CSV)

    manifest = convert_csv(
        csv_path,
        tmp_path / "out",
        x1_prefix="left_",
        x2_prefix="right_",
        label_columns=("digit", "kind"),
        id_column="sample",
        split_column="split",
    )

    dataset = read_dataset(manifest)
    # Columns stay in file order: left_b before left_a.
    expected_x1 = np.array([[0.5, 1.0], [1.5, -1.0], [2.5, 3.0], [-0.75, 8.5]], dtype=np.float32)
    expected_x2 = np.array([[-2.0, 4e-3], [2.25, 0.0], [0.125, 1e2], [7.0, -3.5]], dtype=np.float32)
    np.testing.assert_array_equal(dataset.x1, expected_x1)
    np.testing.assert_array_equal(dataset.x2, expected_x2)
    np.testing.assert_array_equal(dataset.labels["digit"], [3, 1, 3, 0])
    np.testing.assert_array_equal(dataset.labels["kind"], [1, 0, 1, 2])
    np.testing.assert_array_equal(dataset.train_index, [0, 2, 3])
    np.testing.assert_array_equal(dataset.test_index, [1])
    stored = pq.read_table(manifest.parent / "data.parquet", columns=["sample_id", "kind"])
    assert stored.column("sample_id").type == "int64"
    assert stored.column("sample_id").to_pylist() == [10, 11, 12, 13]
    assert stored.column("kind").to_pylist() == ["dog", "cat", "dog", "emu"]


def test_csv_ids_with_leading_zeros_stay_strings(tmp_path: Path) -> None:
    csv_path = _write_text(tmp_path / "table.csv", ["id,a_0,b_0", "007,1,2", "7,3,4", "008,5,6"])

    manifest = convert_csv(csv_path, tmp_path / "out", x1_prefix="a_", x2_prefix="b_", id_column="id")

    stored = pq.read_table(manifest.parent / "data.parquet", columns=["sample_id"])
    assert stored.column("sample_id").to_pylist() == ["007", "7", "008"]


def test_csv_columns_layout_round_trip(tmp_path: Path) -> None:
    csv_path = _write_text(tmp_path / "table.csv", ["a_0;a_1;b_0", "1;2;3", "4;5;6", "7;8;9"])

    manifest = convert_csv(
        csv_path, tmp_path / "out", x1_prefix="a_", x2_prefix="b_", delimiter=";", layout="columns",
        test_fraction=0.05,
    )

    dataset = read_dataset(manifest)
    np.testing.assert_array_equal(dataset.x1, [[1, 2], [4, 5], [7, 8]])
    np.testing.assert_array_equal(dataset.x2, [[3], [6], [9]])
    # 0.05 of 3 rows rounds to 0 test rows, raised to 1 so that both splits exist.
    assert dataset.test_index.size == 1


# Each case: replaced lines of _GOOD_CSV (index -> text), converter options, expected fragments.
_CSV_CASES: dict[str, tuple[dict[int, str], dict[str, object], list[str]]] = {
    "non-numeric cell": (
        {6: "13,-0.75,abc,0,7,emu,-3.5,train,last"},
        {},
        ["table.csv", "column 'left_a'", "line 7", "non-numeric value 'abc'"],
    ),
    "empty cell": (
        {2: "11,1.5,-1.0,1,,cat,0,test,"},
        {},
        ["column 'right_0'", "line 3", "empty cell"],
    ),
    "NA text": (
        {4: '12,2.5,3,3,0.125,"dog",NA,train,"multi'},
        {},
        ["column 'right_1'", "line 5", "non-numeric value 'NA'"],
    ),
    "infinite value": (
        {1: "10,0.5,1.0,3,-2.0,dog,inf,train,first"},
        {},
        ["column 'right_1'", "line 2", "NaN or infinite"],
    ),
    "beyond float32": (
        {1: "10,0.5,1e39,3,-2.0,dog,0,train,first"},
        {},
        ["column 'left_a'", "line 2", "float32 range"],
    ),
    "missing label column": (
        {},
        {"label_columns": ("species",)},
        ["column 'species' not found", "'digit'", "'kind'"],
    ),
    "no prefix match": (
        {},
        {"x2_prefix": "top_"},
        ["no column name starts with x2_prefix='top_'", "'right_0'"],
    ),
    "column matches both prefixes": (
        {},
        {"x1_prefix": "r", "x2_prefix": "right_"},
        ["column 'right_0' starts with both"],
    ),
    "prefix covers label": (
        {},
        {"x1_prefix": "left_", "x2_prefix": "k", "label_columns": ("kind",)},
        ["column 'kind' starts with x2_prefix='k'", "also named"],
    ),
    "invalid split value": (
        {6: "13,-0.75,8.5,0,7,emu,-3.5,validation,last"},
        {"split_column": "split"},
        ["column 'split'", "line 7", "'validation'", "['train', 'test']"],
    ),
    "duplicate id": (
        {6: "11,-0.75,8.5,0,7,emu,-3.5,train,last"},
        {"id_column": "sample"},
        ["column 'sample'", "id 11 appears 2 times", "line 3", "line 7"],
    ),
    "empty label": (
        {2: "11,1.5,-1.0,1,2.25,,0,test,"},
        {"label_columns": ("kind",)},
        ["column 'kind'", "line 3", "empty label"],
    ),
    "ragged line": (
        {2: "11,1.5,-1.0,1,2.25,cat,0"},
        {},
        ["table.csv", "cannot be parsed as CSV", "as many fields as the header"],
    ),
}


@pytest.mark.parametrize("case", sorted(_CSV_CASES))
def test_csv_bad_input_message(tmp_path: Path, case: str) -> None:
    replacements, options, expected = _CSV_CASES[case]
    lines = list(_GOOD_CSV)
    for index, text in replacements.items():
        lines[index] = text
    csv_path = _write_text(tmp_path / "table.csv", lines)
    out_dir = tmp_path / "out"
    arguments: dict[str, object] = {"x1_prefix": "left_", "x2_prefix": "right_", **options}

    with pytest.raises(ConversionError) as caught:
        convert_csv(csv_path, out_dir, **arguments)  # type: ignore[arg-type]

    message = str(caught.value)
    for fragment in expected:
        assert fragment in message
    _assert_nothing_written(out_dir)


def test_csv_reports_every_bad_cell(tmp_path: Path) -> None:
    lines = ["a_0,a_1,b_0", "1,x,3", "4,5,", "7,8,9", ",y,1"]
    csv_path = _write_text(tmp_path / "table.csv", lines)

    with pytest.raises(ConversionError) as caught:
        convert_csv(csv_path, tmp_path / "out", x1_prefix="a_", x2_prefix="b_")

    problems = caught.value.problems
    assert len(problems) == 4
    assert any("column 'a_0', line 5: empty cell" in problem for problem in problems)
    assert any("column 'a_1', line 2: non-numeric value 'x'" in problem for problem in problems)
    assert any("column 'a_1', line 5: non-numeric value 'y'" in problem for problem in problems)
    assert any("column 'b_0', line 3: empty cell" in problem for problem in problems)


# ---------------------------------------------------------------------------------------------
# Molecules


def test_morgan_fingerprint_properties() -> None:
    smiles = [ETHANOL, BENZENE, ASPIRIN, CAFFEINE, ETHANOL, "OCC"]

    fingerprints = smiles_to_morgan(smiles, radius=2, n_bits=1024)

    assert fingerprints.shape == (6, 1024)
    assert fingerprints.dtype == np.float32
    assert set(np.unique(fingerprints).tolist()) == {0.0, 1.0}
    bits_on = fingerprints.sum(axis=1)
    assert 0 < bits_on[0] < bits_on[2]
    assert bits_on[1] < bits_on[2]
    np.testing.assert_array_equal(fingerprints[0], fingerprints[4])
    np.testing.assert_array_equal(fingerprints[0], fingerprints[5])
    assert not np.array_equal(fingerprints[1], fingerprints[3])


def test_morgan_radius_adds_bits() -> None:
    radius_0 = smiles_to_morgan([ASPIRIN], radius=0, n_bits=2048)
    radius_2 = smiles_to_morgan([ASPIRIN], radius=2, n_bits=2048)

    # Radius 0 keeps only atom environments, which are also part of the radius-2 fingerprint.
    assert radius_0.sum() < radius_2.sum()
    assert np.all(radius_2[radius_0 == 1] == 1)


def test_morgan_rejects_every_invalid_smiles(capfd: pytest.CaptureFixture[str]) -> None:
    from rdkit import rdBase

    log_status_before = rdBase.LogStatus()

    with pytest.raises(ConversionError) as caught:
        smiles_to_morgan([ETHANOL, "C1CC", BENZENE, "not_a_smiles", ""])

    problems = caught.value.problems
    assert len(problems) == 3
    assert "row index 1" in problems[0]
    assert "'C1CC'" in problems[0]
    assert "unclosed ring" in problems[0]
    assert "row index 3" in problems[1]
    assert "'not_a_smiles'" in problems[1]
    assert "row index 4" in problems[2]
    assert "empty SMILES" in problems[2]
    assert "SMILES Parse Error" not in capfd.readouterr().err
    assert rdBase.LogStatus() == log_status_before


def test_morgan_rejects_bad_arguments() -> None:
    with pytest.raises(ConversionError, match="single string 'CCO'"):
        smiles_to_morgan(ETHANOL)
    with pytest.raises(ConversionError, match="n_bits must be an integer >= 1, got 0"):
        smiles_to_morgan([ETHANOL], n_bits=0)
    with pytest.raises(ConversionError, match="radius must be an integer >= 0, got -1"):
        smiles_to_morgan([ETHANOL], radius=-1)


_SMILES_TABLE = [
    "compound,smiles,p_0,p_1,p_2,moa",
    f"ethanol,{ETHANOL},0.1,0.2,0.3,solvent",
    f"benzene,{BENZENE},1.0,-1.0,0.5,solvent",
    f'aspirin,"{ASPIRIN}",2.0,0.0,-0.5,cox',
    f"caffeine,{CAFFEINE},-0.25,3.0,1.5,adenosine",
    f"ethanol_2,{ETHANOL},0.15,0.25,0.35,solvent",
]


def test_smiles_table_round_trip(tmp_path: Path) -> None:
    csv_path = _write_text(tmp_path / "profiles.csv", _SMILES_TABLE)

    manifest = convert_smiles_table(
        csv_path,
        tmp_path / "out",
        smiles_column="smiles",
        x1_prefix="p_",
        label_columns=("moa",),
        id_column="compound",
        n_bits=512,
        test_fraction=0.2,
    )

    dataset = read_dataset(manifest)
    expected_x1 = np.array(
        [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [2.0, 0.0, -0.5], [-0.25, 3.0, 1.5], [0.15, 0.25, 0.35]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(dataset.x1, expected_x1)
    expected_x2 = smiles_to_morgan([ETHANOL, BENZENE, ASPIRIN, CAFFEINE, ETHANOL], n_bits=512)
    np.testing.assert_array_equal(dataset.x2, expected_x2)
    np.testing.assert_array_equal(dataset.labels["moa"], [2, 2, 1, 0, 2])
    assert dataset.train_index.size == 4


def test_smiles_table_rejects_invalid_smiles(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    lines = list(_SMILES_TABLE)
    lines[3] = "aspirin,C1CC,2.0,0.0,-0.5,cox"
    lines.append("broken,not_a_smiles,0,0,0,none")
    csv_path = _write_text(tmp_path / "profiles.csv", lines)
    out_dir = tmp_path / "out"

    with pytest.raises(ConversionError) as caught:
        convert_smiles_table(csv_path, out_dir, smiles_column="smiles", x1_prefix="p_")

    problems = caught.value.problems
    assert len(problems) == 2
    assert "profiles.csv, column 'smiles', line 4: invalid SMILES 'C1CC'" in problems[0]
    assert "profiles.csv, column 'smiles', line 7: invalid SMILES 'not_a_smiles'" in problems[1]
    assert "SMILES Parse Error" not in capfd.readouterr().err
    _assert_nothing_written(out_dir)


def test_smiles_table_missing_smiles_column(tmp_path: Path) -> None:
    csv_path = _write_text(tmp_path / "profiles.csv", _SMILES_TABLE)
    out_dir = tmp_path / "out"

    with pytest.raises(ConversionError, match="column 'structure' not found. The header has the columns"):
        convert_smiles_table(csv_path, out_dir, smiles_column="structure", x1_prefix="p_")

    _assert_nothing_written(out_dir)


def test_csv_caps_rows_per_problem(tmp_path: Path) -> None:
    lines = ["a_0,b_0", *[f",{row}" for row in range(8)]]
    csv_path = _write_text(tmp_path / "table.csv", lines)

    with pytest.raises(ConversionError) as caught:
        convert_csv(csv_path, tmp_path / "out", x1_prefix="a_", x2_prefix="b_")

    problems = caught.value.problems
    assert len(problems) == 6
    assert "column 'a_0', line 2: empty cell" in problems[0]
    assert "column 'a_0', line 6: empty cell" in problems[4]
    assert "3 more rows with the same problem" in problems[5]


def test_single_class_label_writes_nothing(tmp_path: Path) -> None:
    rows = ["id,a_0,a_1,b_0,label"] + [f"{i},{i}.5,1,2,alpha" for i in range(20)]
    source = tmp_path / "one_class.csv"
    source.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"

    with pytest.raises(ConversionError) as error:
        convert_csv(source, out, x1_prefix="a_", x2_prefix="b_", label_columns=["label"], id_column="id")
    message = str(error.value)
    assert "one_class.csv" in message
    assert "'label'" in message
    assert "single class 'alpha'" in message
    assert not out.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".converting")]


def test_fractional_label_column_rejected(tmp_path: Path) -> None:
    rows = ["id,a_0,b_0,score"] + [f"{i},{i},{-i},{i / 7:.4f}" for i in range(20)]
    source = tmp_path / "scores.csv"
    source.write_text("\n".join(rows) + "\n")

    with pytest.raises(ConversionError) as error:
        convert_csv(source, tmp_path / "out", x1_prefix="a_", x2_prefix="b_", label_columns=["score"])
    message = str(error.value)
    assert "column 'score'" in message
    assert "labels must be classes" in message
    assert "(e.g. '0.0000')" in message
    assert not (tmp_path / "out").exists()
