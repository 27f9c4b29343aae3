"""secagg.arrays: updates (numpy arrays, torch state_dicts) to ring words and back."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import ArraySpec, EncodingError, FixedPointEncoder, choose_modulus_bits
from secagg.encoding import to_ring

N = 5


def _encoder(n: int = N, clip: float = 4.0, value_bits: int = 24) -> FixedPointEncoder:
    bits = choose_modulus_bits(value_bits, n)
    return FixedPointEncoder(clip=clip, value_bits=value_bits, modulus_bits=bits, max_summands=n)


def _sum(words: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(words[0])
    for w in words:
        total = total + w
    return to_ring(total.astype(np.int64) & ((1 << bits) - 1), bits)


def test_list_of_arrays_round_trip_and_mean() -> None:
    gen = np.random.default_rng(1)
    updates = [
        [gen.normal(size=(3, 4)).astype(np.float32), gen.normal(size=7), np.arange(3) + u]
        for u in range(N)
    ]
    spec = ArraySpec.of(updates[0])
    assert spec.values == 12 + 7 + 3 == spec.size and spec.container == "list"
    enc = _encoder()
    total = _sum([spec.encode(x, enc) for x in updates], enc.modulus_bits)
    mean = spec.decode_mean(total, enc, N)
    assert [m.shape for m in mean] == [(3, 4), (7,), (3,)]
    assert mean[0].dtype == np.float32 and mean[2].dtype == updates[0][2].dtype
    for i in range(2):
        exact = np.mean([x[i] for x in updates], axis=0)
        assert np.max(np.abs(mean[i] - exact)) < 1e-5
    # integer entries travel exactly: mean of (0,1,2)+u over u = 0..4 is (2,3,4)
    assert mean[2].tolist() == [2, 3, 4]


def test_flatten_unflatten_single_array_and_mapping() -> None:
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    spec = ArraySpec.of(x)
    assert spec.container == "array"
    assert np.array_equal(spec.unflatten(spec.flatten(x)), x)
    d = {"w": x, "steps": np.array(7, dtype=np.int64)}
    spec = ArraySpec.of(d)
    back = spec.unflatten(spec.flatten(d))
    assert list(back) == ["w", "steps"] and back["steps"] == 7 and back["steps"].shape == ()


def test_weighted_mean_matches_plaintext() -> None:
    gen = np.random.default_rng(2)
    xs = [gen.uniform(-1, 1, size=10) for _ in range(N)]
    weights = [0.1, 1.0, 0.5, 0.25, 0.8]
    spec = ArraySpec.of(xs[0], weighted=True)
    assert spec.size == 11
    enc = _encoder()
    total = _sum(
        [spec.encode(x, enc, weight=w) for x, w in zip(xs, weights, strict=True)], enc.modulus_bits
    )
    mean = spec.decode_mean(total, enc, N)
    exact = sum(w * x for x, w in zip(xs, weights, strict=True)) / sum(weights)
    assert np.max(np.abs(mean - exact)) < 1e-5


def test_torch_state_dict_with_integer_buffers() -> None:
    torch = pytest.importorskip("torch")
    models = [torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)) for _ in range(N)]
    for u, m in enumerate(models):
        m.train()
        for _ in range(u + 1):  # num_batches_tracked = u + 1
            m(torch.randn(4, 3))
    states = [m.state_dict() for m in models]
    spec = ArraySpec.of(states[0])
    enc = _encoder()
    total = _sum([spec.encode(s, enc) for s in states], enc.modulus_bits)
    mean = spec.decode_mean(total, enc, N)
    assert list(mean) == list(states[0])
    assert mean["1.num_batches_tracked"].dtype == torch.int64
    assert int(mean["1.num_batches_tracked"]) == 3  # mean of 1..5
    for key in ("0.weight", "1.running_var"):
        exact = sum(s[key] for s in states) / N
        assert mean[key].dtype == torch.float32
        assert float((mean[key] - exact).abs().max()) < 1e-5
    models[0].load_state_dict(mean)  # loads as is


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ([np.zeros(3)], "list of 2 arrays"),
        ([np.zeros(3), np.zeros(4)], "shape (4,)"),
        ([np.zeros(3), np.zeros(2, dtype=np.float64)], "dtype float64"),
        ({"a": np.zeros(3)}, "expected a list"),
        ([np.zeros(3), np.array(["a", "b"])], "real numbers"),
        ([np.zeros(3), np.array([1j, 2j])], "real numbers"),
        ("abc", "arrays must be"),
    ],
)
def test_structure_mismatch_names_the_problem(other: object, message: str) -> None:
    spec = ArraySpec.of([np.zeros(3), np.zeros(2, dtype=np.int32)])
    with pytest.raises(EncodingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.encode(other, _encoder())


def test_integer_entry_out_of_range_and_weights_are_refused() -> None:
    enc = _encoder(value_bits=8)
    spec = ArraySpec.of([np.array([1000])])
    with pytest.raises(EncodingError, match="value range"):
        spec.encode([np.array([1000])], enc)
    with pytest.raises(EncodingError, match="not weighted"):
        ArraySpec.of([np.zeros(2)]).encode([np.zeros(2)], enc, weight=0.5)
    weighted = ArraySpec.of([np.zeros(2)], weighted=True)
    for bad in (None, 1.5, -0.1):
        with pytest.raises(EncodingError, match="weight"):
            weighted.encode([np.zeros(2)], enc, weight=bad)
    with pytest.raises(EncodingError, match="NaN"):
        ArraySpec.of(np.zeros(2)).encode(np.array([np.nan, 1.0]), enc)
    with pytest.raises(EncodingError, match="no values"):
        ArraySpec.of([])
