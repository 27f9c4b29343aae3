"""secagg.flower's quantisation against Flower 1.42's own server arithmetic, and the state codec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr")

from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from secagg.errors import ConfigError, EncodingError
from secagg.flower import FlowerQuantizer
from secagg.flower._codec import StateDecodeError, decode, encode


def flower_server_mean(total: np.ndarray, survivors: int, q: FlowerQuantizer) -> np.ndarray:
    """Flower's unmask_stage arithmetic, verbatim, on one flat vector."""
    q_total_ratio, recon = factor_extract([total[:1].astype(np.int64), total[1:].astype(np.int64)])
    inv = q.quantization_range / q_total_ratio
    (vec,) = dequantize(recon, q.clipping_range, q.quantization_range)
    vec += -(survivors - 1) * q.clipping_range
    vec *= inv
    return np.asarray(vec)


def test_our_dequantisation_is_flowers_arithmetic() -> None:
    q = FlowerQuantizer()
    gen = np.random.default_rng(0)
    words = [
        q.quantize([gen.uniform(-3, 3, 40)], int(gen.integers(1, 900)), 32) for _ in range(7)
    ]
    total = np.sum([w.astype(np.uint64) for w in words], axis=0)
    (ours,) = q.dequantize(total, 7, [(40,)])
    np.testing.assert_allclose(ours, flower_server_mean(total, 7, q), rtol=0, atol=1e-12)


def test_quantisation_matches_flowers_in_distribution() -> None:
    q = FlowerQuantizer(clipping_range=2.0, quantization_range=1024)
    x = np.full(20000, 0.3337)
    ours = q.quantize([x], 1000, 32)[1:].astype(np.float64)
    np.random.seed(1)
    (theirs,) = quantize([x], 2.0, 1024)
    # Same grid, same unbiased rounding: identical floor/ceil support and matching means.
    assert set(np.unique(ours)) <= {np.floor((0.3337 + 2) * 256), np.ceil((0.3337 + 2) * 256)}
    assert set(np.unique(ours)) == set(np.unique(theirs))
    assert abs(ours.mean() - theirs.mean()) < 0.02
    assert abs(ours.mean() / 256 - 2 - 0.3337) < 1e-3


def test_weight_above_max_weight_is_refused_not_wrapped() -> None:
    q = FlowerQuantizer(max_weight=10.0)
    with pytest.raises(EncodingError, match="max_weight"):
        q.quantize([np.zeros(3)], 11, 32)


def test_modulus_widens_for_large_cohorts_and_refuses_impossible_ones() -> None:
    q = FlowerQuantizer()
    assert q.modulus_bits(2**32, 100) == 32
    assert q.modulus_bits(2**32, 5000) == 35  # Flower would wrap around silently here
    with pytest.raises(ConfigError, match="power of 2"):
        q.modulus_bits(3 * 2**30, 10)
    with pytest.raises(ConfigError, match="needs"):
        FlowerQuantizer(quantization_range=2**50).modulus_bits(2**60, 2**20)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.integers() | st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _lists(v: object) -> object:
    if isinstance(v, tuple | list):
        return [_lists(x) for x in v]
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    return v


@given(plain)
@settings(max_examples=200, deadline=None)
def test_codec_round_trips_canonically(value: object) -> None:
    data = encode(value)
    assert decode(data) == _lists(value)
    assert encode(decode(data)) == data


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_codec_decodes_arbitrary_bytes_or_raises_its_error(data: bytes) -> None:
    try:
        value = decode(data)
    except StateDecodeError:
        return
    assert encode(value) == data  # only the canonical encoding is accepted
