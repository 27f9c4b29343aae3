"""Phase 5, Unmasking: each honest party reveals exactly one kind of share per neighbour; the
server reconstructs b_v of survivors and s_v of dropped parties and removes their masks.

Bonawitz et al. 2017, section 4, round 4. The client-side checks are the security argument: a
party that revealed both b_v and s_v for the same v would hand the server y_v unmasked.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg.config import RoundConfig
from secagg.crypto import keys, shamir
from secagg.crypto.prg import SEED_BYTES
from secagg.engine import consistency
from secagg.engine.masked_input import mask_context
from secagg.engine.masking import DroppedPartyMasks, self_mask_stream_seed, total_mask_parallel
from secagg.engine.share_keys import (
    KEY_SHARE_BYTES,
    MASK_KEY_BYTES,
    SELF_SHARE_BYTES,
    HeldShares,
    self_mask_commitment,
)
from secagg.errors import AbortedError, RemoteProtocolError
from secagg.messages import SERVER, UnmaskRequest, UnmaskResponse


def weak_blocks(
    config: RoundConfig, party: int, survivors: set[int], surviving_peers: set[int]
) -> list[int]:
    """Blocks of ``party`` whose sum would not hide its value: fewer than ``min_holders``
    surviving holders, or fewer than ``min_holders - 1`` surviving neighbours of the party that
    hold the block (with a sparse graph those are the only masks protecting it: see
    :mod:`secagg.layout`). Empty when aggregation is not part-wise."""
    if not config.part_wise:
        return []
    layout = config.blocks
    weak = []
    for b in layout.holdings[party]:
        alive = [h for h in layout.holders[b] if h in survivors]
        masked_with = sum(1 for h in alive if h in surviving_peers)
        if len(alive) < layout.min_holders or masked_with < layout.min_holders - 1:
            weak.append(b)
    return weak


def client_unmask(
    config: RoundConfig,
    party: int,
    held: HeldShares,
    request: UnmaskRequest,
    signed_survivors: tuple[int, ...] | None,
) -> UnmaskResponse:
    """Answer an unmask request, or refuse it.

    Raises:
        RemoteProtocolError: overlapping or inconsistent lists, this party listed as dropped or
            missing, a neighbour it masked with left out (or one it never masked with listed),
            fewer than t surviving neighbours, or (active mode) a survivor list other than the
            one it signed or without t valid signatures.
    """
    survivors, dropped = set(request.survivors), set(request.dropped)
    if any(not 0 <= p < config.num_parties for p in survivors | dropped):
        raise RemoteProtocolError("unmask request names parties outside this round")
    if survivors & dropped:
        raise RemoteProtocolError("survivor and dropped lists overlap")
    if party not in survivors:
        raise RemoteProtocolError("unmask request does not list this party as a survivor")
    if len(survivors) < config.threshold:
        raise RemoteProtocolError(
            f"{len(survivors)} survivors, fewer than the threshold {config.threshold}"
        )
    if config.active:
        if signed_survivors is None or tuple(request.survivors) != signed_survivors:
            raise RemoteProtocolError("survivor list differs from the one this party signed")
        consistency.check_signatures(config, request.survivors, request.signatures)
    elif request.signatures:
        raise RemoteProtocolError("signatures in a semi-honest round")
    peers = set(held.peers)
    neighbors = set(config.neighbors(party))
    listed = (survivors | dropped) & neighbors
    if listed - peers:
        raise RemoteProtocolError(
            f"neighbours {sorted(listed - peers)[:5]} are listed but never masked with this party"
        )
    if peers - listed:
        raise RemoteProtocolError(
            f"neighbours {sorted(peers - listed)[:5]} this party masked with are not accounted for"
        )
    surviving_peers = sorted(peers & survivors)
    if len(surviving_peers) < config.threshold:
        # Fewer surviving neighbours than t: the input would be protected by too few pairwise
        # masks (Bell et al. 2020, section 3: security needs the surviving graph connected).
        raise RemoteProtocolError(
            f"only {len(surviving_peers)} surviving neighbours, fewer than the threshold"
            f" {config.threshold}"
        )
    # Part-wise: revealing b_w unmasks w's blocks in the sums, so check the blocks of every
    # survivor whose self-mask share this party hands over, not only its own: otherwise a
    # malicious server could collect a thin block's sum from parties that do not hold it.
    # In active mode the partners are the ones each owner signed (the server's routing decided
    # them, so the graph says nothing): a server that withheld deliveries to isolate an owner on
    # a block is caught here. Semi-honest servers route as the protocol says.
    signed = {p.party: p for p in request.partner_sets}
    for owner in (party, *surviving_peers):
        if owner == party:
            owner_peers = set(surviving_peers)
        elif config.active:
            if owner not in signed:
                raise RemoteProtocolError(f"no signed partner set for party {owner}")
            owner_peers = survivors & consistency.verified_partners(config, signed[owner])
            if len(owner_peers) < config.threshold:
                raise RemoteProtocolError(
                    f"party {owner} masked with only {len(owner_peers)} surviving partners"
                )
        else:
            owner_peers = survivors & set(config.neighbors(owner))
        weak = weak_blocks(config, owner, survivors, owner_peers)
        if weak:
            raise RemoteProtocolError(
                f"blocks {weak[:5]} of party {owner} would be revealed for fewer than"
                " min_holders surviving holders"
            )
    dropped_peers = sorted(peers & dropped)
    return UnmaskResponse(
        config.session_id,
        config.round_index,
        party,
        SERVER,
        self_mask_owners=tuple(surviving_peers),
        self_mask_shares=tuple(held.self_mask_shares[v] for v in surviving_peers),
        mask_key_owners=tuple(dropped_peers),
        mask_key_shares=tuple(held.mask_key_shares[v] for v in dropped_peers),
    )


class RevealedShares(Mapping[int, dict[int, bytes]]):
    """The shares of one kind (self-mask seeds or mask keys) revealed so far, stored as each
    response brought them: an array of owners and one blob of fixed-size shares per responder.

    Nothing is done per share while responses arrive (no dict per owner): the reconstruction
    sorts all of them at once (:meth:`arrays`). The ``owner -> {holder: share}`` mapping view
    exists for persistence and inspection and is built on demand.
    """

    def __init__(self, owners: Sequence[int], share_bytes: int) -> None:
        self.owners = tuple(owners)
        self.share_bytes = share_bytes
        self._holders: list[int] = []
        self._owner_ids: list[npt.NDArray[np.int64]] = []
        self._blobs: list[bytes] = []

    def append(self, holder: int, owners: Sequence[int], shares: Sequence[bytes]) -> None:
        """Record what ``holder`` revealed (checked by the caller)."""
        if not owners:
            return
        self._holders.append(holder)
        self._owner_ids.append(np.asarray(owners, dtype=np.int64))
        self._blobs.append(b"".join(shares))

    def arrays(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint32]]:
        """(owner, holder, share limbs) of every revealed share, share limbs as (E, limbs)."""
        limbs = self.share_bytes // 4
        if not self._owner_ids:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros((0, limbs), dtype=np.uint32)
        owners = np.concatenate(self._owner_ids)
        counts = [len(o) for o in self._owner_ids]
        holders = np.repeat(np.asarray(self._holders, dtype=np.int64), counts)
        shares = np.frombuffer(b"".join(self._blobs), dtype=">u4").reshape(-1, limbs)
        return owners, holders, shares

    def _materialize(self) -> dict[int, dict[int, bytes]]:
        out: dict[int, dict[int, bytes]] = {o: {} for o in self.owners}
        size = self.share_bytes
        for holder, owners, blob in zip(self._holders, self._owner_ids, self._blobs, strict=True):
            for i, owner in enumerate(owners.tolist()):
                out[owner][holder] = blob[i * size : (i + 1) * size]
        return out

    def __getitem__(self, owner: int) -> dict[int, bytes]:
        return self._materialize()[owner]

    def __setitem__(self, owner: int, held: dict[int, bytes]) -> None:
        """Restore ``owner``'s shares (from a persisted state)."""
        for holder, share in sorted(held.items()):
            self.append(holder, (owner,), (share,))

    def __iter__(self) -> Iterator[int]:
        return iter(self.owners)

    def __len__(self) -> int:
        return len(self.owners)

    def items(self) -> ItemsView[int, dict[int, bytes]]:
        return self._materialize().items()


class Unmasker:
    """Server side of Unmasking: collects revealed shares, then reconstructs and unmasks.

    Per response the work is a few checks on its owner lists and one append; reconstruction
    and mask regeneration are batched over all parties at the end (Bonawitz et al. 2017,
    section 6.2: the server's unmasking cost should be the PRG, not bookkeeping).
    """

    def __init__(
        self,
        config: RoundConfig,
        survivors: Sequence[int],
        dropped: Sequence[int],
        peers: dict[int, tuple[int, ...]],
        mask_public: dict[int, bytes],
        expected: set[int],
        commitments: dict[int, bytes] | None = None,
    ) -> None:
        """
        Args:
            survivors: U3 (their masked inputs are in the sum).
            dropped: U2 minus U3.
            peers: for each party in U2, its neighbours in U2 (those it masked with).
            mask_public: S_v of every party in U2.
            expected: who may answer.
            commitments: each party's commitment to its self-mask seed (from ShareKeys).
        """
        self.commitments = commitments or {}
        self.config = config
        self.survivors = tuple(survivors)
        self.dropped = tuple(dropped)
        self.peers = peers
        self.mask_public = mask_public
        self.expected = expected
        self.responders: set[int] = set()
        n = config.num_parties
        # 1 for a survivor, 2 for a dropped party: which kind of share of an owner may be shown.
        self._kind = np.zeros(n, dtype=np.int8)
        self._kind[np.asarray(self.survivors, dtype=np.int64)] = 1
        self._kind[np.asarray(self.dropped, dtype=np.int64)] = 2
        self.self_mask_shares = RevealedShares(self.survivors, SELF_SHARE_BYTES)
        self.mask_key_shares = RevealedShares(self.dropped, KEY_SHARE_BYTES)

    def add(self, message: UnmaskResponse) -> None:
        w = message.sender
        if w not in self.expected:
            raise RemoteProtocolError(f"unmask response from party {w}, which was not asked")
        if w in self.responders:
            raise RemoteProtocolError(f"party {w} answered the unmask request twice")
        mine = self.peers.get(w, ())
        groups = (
            (message.self_mask_owners, message.self_mask_shares, self.self_mask_shares, 1),
            (message.mask_key_owners, message.mask_key_shares, self.mask_key_shares, 2),
        )
        for owners, shares, store, kind in groups:
            if not owners:
                continue
            # Only shares of the owners this party holds shares of (its partners in U2), and
            # of the right kind for each owner (b_v of survivors, s_v of dropped parties).
            if not set(owners).issubset(mine) or not np.all(
                self._kind[np.asarray(owners, dtype=np.int64)] == kind
            ):
                raise RemoteProtocolError(f"party {w} revealed a share it should not have")
            if any(len(s) != store.share_bytes for s in shares):
                raise RemoteProtocolError(f"party {w} revealed a malformed share")
        for owners, shares, store, _ in groups:
            store.append(w, owners, shares)
        self.responders.add(w)

    def finish(
        self,
        masked_total: npt.NDArray[np.unsignedinteger],
        executor: Executor | None = None,
        workers: int = 1,
    ) -> npt.NDArray[np.unsignedinteger]:
        """Reconstruct the secrets, remove every mask and return sum_{u in U3} x_u mod 2^B.

        Raises:
            AbortedError: fewer than t shares for some secret.
            RemoteProtocolError: revealed shares are inconsistent (a reconstructed mask key does
                not match the advertised public key).
        """
        ctx = mask_context(self.config)
        t = self.config.threshold
        seeds = _reconstruct_all(self.self_mask_shares, t, SEED_BYTES)
        keys_ = _reconstruct_all(self.mask_key_shares, t, MASK_KEY_BYTES)
        for u in self.survivors:
            if (
                u in self.commitments
                and self_mask_commitment(self.config, u, seeds[u]) != self.commitments[u]
            ):
                raise RemoteProtocolError(f"shares of party {u}'s self-mask seed are inconsistent")
        alive = self._kind == 1
        dropped_masks = []
        for v, sk in keys_.items():
            if keys.x25519_public(sk) != self.mask_public[v]:
                raise RemoteProtocolError(f"shares of party {v}'s mask key are inconsistent")
            live = tuple((w, self.mask_public[w]) for w in self.peers[v] if alive[w])
            if live:
                dropped_masks.append(DroppedPartyMasks(v, sk, live))
        self_seeds = [(u, self_mask_stream_seed(ctx, seeds[u], u)) for u in self.survivors]
        mask = total_mask_parallel(ctx, self_seeds, dropped_masks, executor, workers)
        result = np.subtract(masked_total, mask)
        return encoding.reduce(result, self.config.modulus_bits)


def _reconstruct_all(shares: RevealedShares, threshold: int, secret_bytes: int) -> dict[int, bytes]:
    """Rebuild every owner's secret from its first t holders (sorted by id), all owners in one
    batch: one sort of all revealed shares, then row-batched Lagrange interpolation (each owner
    has its own holder set on a sparse graph)."""
    required = np.asarray(shares.owners, dtype=np.int64)
    if required.size == 0:
        return {}
    owners, holders, limbs = shares.arrays()
    counts = np.bincount(owners, minlength=int(required.max()) + 1)[required]
    short = np.flatnonzero(counts < threshold)
    if short.size:
        owner = int(required[short[0]])
        raise AbortedError(
            f"only {int(counts[short[0]])} shares of party {owner}'s secret, fewer than the"
            f" threshold {threshold}"
        )
    order = np.lexsort((holders, owners))
    starts = np.searchsorted(owners[order], required)
    picked = order[starts[:, None] + np.arange(threshold)[None, :]]  # (m, t) share indices
    try:
        secrets = shamir.reconstruct_rows(
            holders[picked] + 1, limbs[picked].astype(np.uint64), secret_bytes
        )
    except ValueError as exc:
        raise RemoteProtocolError(f"revealed shares are inconsistent: {exc}") from None
    return dict(zip(shares.owners, (bytes(row) for row in secrets), strict=True))
