"""Mask seeds and mask expansion shared by the parties and the server.

Both sides must derive bit-identical seeds: the pairwise seed from X25519 plus HKDF with the pair
sorted (symmetric), the self-mask stream from b_u with the owner bound in. The sign convention
(Bonawitz et al. 2017, section 3): the lower id of a pair adds PRG(s_uv), the higher subtracts it,
so the pair's masks cancel in the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.crypto import kdf, keys, prg
from secagg.errors import RemoteProtocolError
from secagg.layout import BlockLayout


@dataclass(frozen=True)
class MaskContext:
    """What seed derivation binds (the round configuration's digest, which covers the session,
    and the round) and the shape masks take (dim, word type, and, in part-wise mode, the block
    layout)."""

    config_digest: bytes
    round_index: int
    dim: int
    dtype: np.dtype[np.unsignedinteger]
    layout: BlockLayout | None = None


def add_block_mask(
    target: npt.NDArray[np.unsignedinteger],
    seed: bytes,
    layout: BlockLayout | None,
    blocks: tuple[int, ...],
    positions: npt.NDArray[np.int64] | None,
    *,
    subtract: bool = False,
    buffer: prg.KeystreamBuffer | None = None,
) -> None:
    """Add (or subtract) the mask PRG(seed, b) of every block b in ``blocks`` at ``positions``
    of ``target`` (``None``: the blocks cover all of ``target``, in order). Without a layout the
    single block covers all of ``target`` (fast path: the keystream goes straight into a reused
    buffer)."""
    if layout is None:
        prg.add_mask(target, seed, subtract=subtract, buffer=buffer)
        return
    if not blocks:
        return
    sizes = [layout.block_sizes[b] for b in blocks]
    mask = prg.expand_blocks(seed, blocks, sizes, target.dtype)
    if positions is None:  # the blocks cover all of ``target`` (a party's own vector)
        if subtract:
            np.subtract(target, mask, out=target)
        else:
            np.add(target, mask, out=target)
        return
    # positions are distinct, so fancy-indexed in-place arithmetic is exact.
    if subtract:
        target[positions] -= mask
    else:
        target[positions] += mask


def pairwise_seed(ctx: MaskContext, shared_secret: bytes, u: int, v: int) -> bytes:
    """s_uv: the PRG seed of the pair {u, v} (symmetric in u and v)."""
    return kdf.derive_key(
        shared_secret,
        kdf.Purpose.PAIRWISE_MASK,
        session_id=ctx.config_digest,
        round_index=ctx.round_index,
        parties=(min(u, v), max(u, v)),
        length=prg.SEED_BYTES,
    )


def self_mask_stream_seed(ctx: MaskContext, self_mask_seed: bytes, owner: int) -> bytes:
    """The PRG key of PRG(b_u), bound to the owner, session and round."""
    return kdf.derive_key(
        self_mask_seed,
        kdf.Purpose.SELF_MASK_STREAM,
        session_id=ctx.config_digest,
        round_index=ctx.round_index,
        parties=(owner,),
        length=prg.SEED_BYTES,
    )


@dataclass(frozen=True)
class DroppedPartyMasks:
    """What the server needs to rebuild the pairwise masks a dropped party v shared with survivors.

    Attributes:
        dropped: v.
        mask_private: s_v^SK, reconstructed from t shares.
        survivors: (w, S_w) for each surviving neighbour w that masked with v.
        mask_public: S_v as v advertised it; when given, the worker checks the reconstructed
            key against it before using it (on the worker, in parallel: ~50 us per key).
    """

    dropped: int
    mask_private: bytes
    survivors: tuple[tuple[int, bytes], ...]
    mask_public: bytes | None = None


def total_mask(
    ctx: MaskContext,
    self_seeds: Sequence[tuple[int, bytes]],
    dropped: Sequence[DroppedPartyMasks],
    *,
    raw_self_seeds: bool = False,
) -> npt.NDArray[np.unsignedinteger]:
    """Sum over survivors of PRG(b_w), plus the pairwise masks survivors added with dropped
    parties, all with the signs the survivors used. Subtracting this from the sum of masked inputs
    leaves the sum of inputs.

    Args:
        ctx: session, round and vector shape.
        self_seeds: (survivor, its self-mask stream seed) for every survivor; with
            ``raw_self_seeds``, (survivor, b_w) and the stream seed is derived here.
        dropped: every dropped party whose pairwise masks survivors included.

    Raises:
        RemoteProtocolError: a dropped party's reconstructed mask key does not match the public
            key it advertised (the revealed shares were inconsistent).
    """
    total = np.zeros(ctx.dim, dtype=ctx.dtype)
    buffer = prg.KeystreamBuffer()
    layout = ctx.layout
    for owner, seed in self_seeds:
        if raw_self_seeds:
            seed = self_mask_stream_seed(ctx, seed, owner)
        blocks = layout.holdings[owner] if layout is not None else ()
        where = layout.positions(blocks) if layout is not None else None
        add_block_mask(total, seed, layout, blocks, where, buffer=buffer)
    for item in dropped:
        if item.mask_public is not None and (
            keys.x25519_public(item.mask_private) != item.mask_public
        ):
            raise RemoteProtocolError(f"shares of party {item.dropped}'s mask key are inconsistent")
        secrets = keys.x25519_shared_secrets(item.mask_private, [pk for _, pk in item.survivors])
        for (w, _), secret in zip(item.survivors, secrets, strict=True):
            blocks = layout.common_blocks(w, item.dropped) if layout is not None else ()
            if layout is not None and not blocks:
                continue  # no block in common: no pairwise mask between them
            where = layout.positions(blocks) if layout is not None else None
            # Survivor w added +PRG(s_wv) if w < v, -PRG(s_wv) otherwise.
            seed = pairwise_seed(ctx, secret, w, item.dropped)
            add_block_mask(
                total, seed, layout, blocks, where, subtract=w > item.dropped, buffer=buffer
            )
    return total


def total_mask_parallel(
    ctx: MaskContext,
    self_seeds: Sequence[tuple[int, bytes]],
    dropped: Sequence[DroppedPartyMasks],
    executor: Executor | None,
    workers: int,
    *,
    raw_self_seeds: bool = False,
) -> npt.NDArray[np.unsignedinteger]:
    """:func:`total_mask` split into ``workers`` balanced jobs on ``executor`` (processes: the
    keystream generation holds the GIL). Mask sums are commutative, so the parts just add."""
    if executor is None or workers <= 1:
        return total_mask(ctx, self_seeds, dropped, raw_self_seeds=raw_self_seeds)
    # Balance by number of keystream expansions: dropped parties first (largest first), then
    # the self masks in contiguous slices that even the loads out.
    jobs: list[tuple[list[tuple[int, bytes]], list[DroppedPartyMasks]]] = [
        ([], []) for _ in range(workers)
    ]
    loads = [0] * workers
    for item in sorted(dropped, key=lambda d: -len(d.survivors)):
        i = loads.index(min(loads))
        jobs[i][1].append(item)
        loads[i] += len(item.survivors)
    target = -(-(sum(loads) + len(self_seeds)) // workers)
    taken = 0
    for i in range(workers):
        take = len(self_seeds) - taken if i == workers - 1 else max(0, target - loads[i])
        jobs[i][0].extend(self_seeds[taken : taken + take])
        taken += take
    futures = [
        executor.submit(total_mask, ctx, s, d, raw_self_seeds=raw_self_seeds)
        for s, d in jobs
        if s or d
    ]
    total = np.zeros(ctx.dim, dtype=ctx.dtype)
    for future in futures:
        np.add(total, future.result(), out=total)
    return total
