"""Model updates as ring words and back: a list of numpy arrays, a mapping of arrays, a single
array, or a PyTorch ``state_dict`` (integer buffers included).

An :class:`ArraySpec` records the structure once (names, shapes, dtypes), so that every party
flattens its update the same way and the server rebuilds the aggregate in the same shape::

    spec = ArraySpec.of(model.state_dict())
    words = spec.encode(model.state_dict(), encoder)          # one party
    mean = spec.decode_mean(total, encoder, survivors=9)      # the server, after the round

Floating-point entries are clipped, scaled and stochastically rounded by the
:class:`~secagg.encoding.FixedPointEncoder` (unbiased, CSPRNG). Integer and boolean entries
(counters such as BatchNorm's ``num_batches_tracked``) travel exactly, unscaled: they must fit in
the encoder's value range, their sum is exact, and their mean is rounded to the nearest integer
(unweighted, over the survivors).

Weighted mean (``weighted=True``): one extra coordinate carries each party's weight w in
[0, 1] (divide example counts by a public maximum first, as Flower's ``max_weight``). A party
sends w * x and w, both fixed-point; the server divides the two sums, so no party's weight is
revealed, only the total. The weight is rounded to the value grid before it multiplies x, so the
numerator and the denominator use the same weight exactly.

torch is imported only when a tensor is seen: the core depends on numpy alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.encoding import FixedPointEncoder, Words, from_ring, to_ring
from secagg.errors import EncodingError

FloatVector = npt.NDArray[np.float64]

#: How the arrays were held: a single array, a sequence, or a mapping (a state_dict).
CONTAINERS = ("array", "list", "mapping")


@dataclass(frozen=True)
class ArrayEntry:
    """One array of an update.

    Attributes:
        key: its name (mapping) or index (list); ``None`` for a single array.
        shape: its shape.
        dtype: the numpy dtype name, or ``torch.<name>`` for a tensor.
        integer: integer or boolean values (exact), else floating point (fixed-point).
        offset: its first coordinate in the flat vector.
    """

    key: str | int | None
    shape: tuple[int, ...]
    dtype: str
    integer: bool
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def torch(self) -> bool:
        return self.dtype.startswith("torch.")

    @property
    def label(self) -> str:
        return "the array" if self.key is None else f"entry {self.key!r}"


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _to_numpy(value: Any, label: str) -> tuple[npt.NDArray[Any], str]:
    """(a numpy array, its dtype name); tensors are detached and copied to the CPU."""
    if _is_tensor(value):
        torch = importlib.import_module("torch")
        tensor = value.detach().cpu()
        name = str(tensor.dtype)  # "torch.float32"
        if tensor.is_complex():
            raise EncodingError(f"{label} holds complex numbers ({name}): not supported")
        if tensor.is_floating_point():
            return tensor.to(torch.float64).numpy(), name
        return tensor.to(torch.int64).numpy(), name
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise EncodingError(f"{label} is not an array of numbers: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise EncodingError(f"{label} must hold real numbers, got dtype {array.dtype}")
    return array, array.dtype.name


def _items(arrays: Any) -> tuple[str, list[tuple[str | int | None, Any]]]:
    if isinstance(arrays, np.ndarray) or _is_tensor(arrays):
        return "array", [(None, arrays)]
    if isinstance(arrays, Mapping):
        for key in arrays:
            if not isinstance(key, str):
                raise EncodingError(f"mapping keys must be strings, got {key!r}")
        return "mapping", list(arrays.items())
    if isinstance(arrays, Sequence) and not isinstance(arrays, str | bytes):
        return "list", list(enumerate(arrays))
    raise EncodingError(
        "arrays must be a numpy array, a list of arrays, or a mapping of arrays (a torch"
        f" state_dict), got {type(arrays).__name__}"
    )


@dataclass(frozen=True)
class ArraySpec:
    """The structure of an update: which arrays, their shapes and dtypes, in a fixed order.

    Build it with :meth:`of` from one party's update (or the model's initial state); every
    party and the server must use the same spec (it is determined by the model architecture).

    Attributes:
        entries: the arrays, in order.
        container: ``"array"``, ``"list"`` or ``"mapping"``.
        weighted: one more coordinate carries the party's weight (see the module docstring).
    """

    entries: tuple[ArrayEntry, ...]
    container: str
    weighted: bool = False

    @classmethod
    def of(cls, arrays: Any, *, weighted: bool = False) -> ArraySpec:
        """The spec of ``arrays`` (a numpy array, a list of arrays, or a mapping of arrays such
        as a torch ``state_dict``)."""
        container, items = _items(arrays)
        entries = []
        offset = 0
        for key, value in items:
            label = "the array" if key is None else f"entry {key!r}"
            array, dtype = _to_numpy(value, label)
            integer = array.dtype.kind in "biu"
            entries.append(ArrayEntry(key, tuple(array.shape), dtype, integer, offset))
            offset += array.size
        if offset == 0:
            raise EncodingError("arrays hold no values: nothing to aggregate")
        return cls(tuple(entries), container, bool(weighted))

    @property
    def values(self) -> int:
        """Number of values (coordinates of the arrays)."""
        last = self.entries[-1]
        return last.offset + last.size

    @property
    def size(self) -> int:
        """Length of the encoded vector: the values, plus the weight slot when weighted. This is
        the ``dim`` of the round's :class:`~secagg.config.RoundConfig`."""
        return self.values + (1 if self.weighted else 0)

    def _integer_mask(self) -> npt.NDArray[np.bool_]:
        mask = np.zeros(self.values, dtype=bool)
        for e in self.entries:
            if e.integer:
                mask[e.offset : e.offset + e.size] = True
        return mask

    def flatten(self, arrays: Any) -> FloatVector:
        """All values in one float64 vector (integer entries converted exactly up to 2^53).

        Raises:
            EncodingError: ``arrays`` do not match the spec (names, count, shapes, kinds).
        """
        container, items = _items(arrays)
        if container != self.container or len(items) != len(self.entries):
            raise EncodingError(
                f"expected a {self.container} of {len(self.entries)} arrays, got a {container}"
                f" of {len(items)}"
            )
        out = np.empty(self.values, dtype=np.float64)
        for entry, (key, value) in zip(self.entries, items, strict=True):
            if key != entry.key:
                raise EncodingError(f"expected {entry.label} here, got {key!r}")
            array, _ = _to_numpy(value, entry.label)
            if tuple(array.shape) != entry.shape:
                raise EncodingError(
                    f"{entry.label} has shape {tuple(array.shape)}, the spec says {entry.shape}"
                )
            if (array.dtype.kind in "biu") != entry.integer:
                raise EncodingError(
                    f"{entry.label} has dtype {array.dtype}, the spec says {entry.dtype}"
                )
            out[entry.offset : entry.offset + entry.size] = array.reshape(-1)
        return out

    def unflatten(self, vector: npt.ArrayLike) -> Any:
        """The arrays of ``vector`` (length :attr:`values`), in the spec's container, shapes and
        dtypes (tensors for tensors). Integer entries are rounded to the nearest integer."""
        flat = np.asarray(vector, dtype=np.float64).reshape(-1)
        if flat.size != self.values:
            raise EncodingError(f"expected {self.values} values, got {flat.size}")
        rebuilt: list[tuple[str | int | None, Any]] = []
        for e in self.entries:
            part = flat[e.offset : e.offset + e.size].reshape(e.shape)
            if e.integer:
                part = np.rint(part)
            if e.torch:
                torch = importlib.import_module("torch")
                value: Any = torch.as_tensor(part).to(getattr(torch, e.dtype.split(".", 1)[1]))
            else:
                value = part.astype(e.dtype)
            rebuilt.append((e.key, value))
        if self.container == "array":
            return rebuilt[0][1]
        if self.container == "list":
            return [v for _, v in rebuilt]
        return {k: v for k, v in rebuilt}

    def encode(
        self, arrays: Any, encoder: FixedPointEncoder, *, weight: float | None = None
    ) -> Words:
        """One party's update as words of Z_(2^B), ready for ``ClientEngine.set_input``.

        Args:
            arrays: the update, structured as the spec.
            encoder: the round's encoder (its ``modulus_bits`` is the round's B).
            weight: with ``weighted=True``, the party's weight in [0, 1] (required); else None.

        Raises:
            EncodingError: a structure mismatch, NaN/inf, an integer entry outside the value
                range, a missing or out-of-range weight.
        """
        values = self.flatten(arrays)
        limit = 2 ** (encoder.value_bits - 1) - 1
        integer = self._integer_mask()
        ints = values[integer]
        if ints.size and float(np.max(np.abs(ints))) > limit:
            raise EncodingError(
                f"an integer entry holds {float(np.max(np.abs(ints))):g}, beyond the encoder's"
                f" value range +-{limit} (value_bits={encoder.value_bits}): raise value_bits"
            )
        if self.weighted:
            if weight is None or not (0.0 <= float(weight) <= 1.0):
                raise EncodingError(
                    f"a weighted spec needs weight in [0, 1] (divide by a public maximum), got"
                    f" weight={weight!r}"
                )
            grid = round(float(weight) * limit)  # the weight as the server will see it
            w = grid / limit
        elif weight is not None:
            raise EncodingError(f"weight={weight!r} given, but the spec is not weighted")
        else:
            w, grid = 1.0, 0
        out = np.empty(self.size, dtype=np.int64)
        floats = values[~integer]
        if floats.size:
            clipped = (
                np.clip(floats, -encoder.clip, encoder.clip)
                if np.all(np.isfinite(floats))
                else floats
            )  # let the encoder name the NaN / inf
            out[: self.values][~integer] = encoder.quantize(w * clipped)
        out[: self.values][integer] = ints.astype(np.int64)
        if self.weighted:
            out[-1] = grid
        return to_ring(out, encoder.modulus_bits)

    def decode_sum(
        self, total: npt.ArrayLike, encoder: FixedPointEncoder, survivors: int
    ) -> tuple[FloatVector, float]:
        """(the flat sum of the survivors' updates, their total weight). Float coordinates are
        the sum of (weight *) values, integer coordinates the exact sum; the total weight is
        ``survivors`` when the spec is not weighted."""
        words = np.asarray(total).reshape(-1)
        if words.size != self.size:
            raise EncodingError(f"expected a sum of {self.size} words, got {words.size}")
        signed = from_ring(words, encoder.modulus_bits)
        integer = self._integer_mask()
        flat = np.empty(self.values, dtype=np.float64)
        # decode_sum checks survivors against the encoder's max_summands (no wrap-around).
        flat[~integer] = encoder.decode_sum(words[: self.values][~integer], survivors)
        flat[integer] = signed[: self.values][integer].astype(np.float64)
        if self.weighted:
            weight = float(signed[-1]) / (2 ** (encoder.value_bits - 1) - 1)
        else:
            weight = float(survivors)
        return flat, weight

    def decode_mean(self, total: npt.ArrayLike, encoder: FixedPointEncoder, survivors: int) -> Any:
        """The (weighted) mean of the survivors' updates, in the spec's structure.

        Args:
            total: the round's sum (``AggregationResult.total``).
            encoder: the round's encoder.
            survivors: how many updates the sum holds (``len(result.survivors)``).

        Raises:
            EncodingError: a wrong length, more survivors than the encoder allows, or a total
                weight of zero.
        """
        flat, weight = self.decode_sum(total, encoder, survivors)
        if weight <= 0:
            raise EncodingError(f"the survivors' total weight is {weight}: no mean exists")
        integer = self._integer_mask()
        flat[~integer] /= weight
        flat[integer] /= survivors
        return self.unflatten(flat)
