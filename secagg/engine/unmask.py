"""Phase 5, Unmasking: each honest party reveals exactly one kind of share per neighbour; the
server reconstructs b_v of survivors and s_v of dropped parties and removes their masks.

Bonawitz et al. 2017, section 4, round 4. The client-side checks are the security argument: a
party that revealed both b_v and s_v for the same v would hand the server y_v unmasked.
"""

from __future__ import annotations

import itertools
from collections.abc import ItemsView, Iterator, Mapping, Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg.config import RoundConfig
from secagg.crypto import shamir
from secagg.crypto.prg import SEED_BYTES
from secagg.engine import consistency
from secagg.engine.masked_input import mask_context
from secagg.engine.masking import DroppedPartyMasks, total_mask_parallel
from secagg.engine.share_keys import (
    KEY_SHARE_BYTES,
    MASK_KEY_BYTES,
    SELF_SHARE_BYTES,
    HeldShares,
    self_mask_commitment,
)
from secagg.errors import AbortedError, RemoteProtocolError
from secagg.messages import SERVER, UnmaskRequest, UnmaskResponse


def connectivity_degree(config: RoundConfig, block: int) -> int:
    """D_b: the fewest surviving partners holding block b that every revealed owner of b must
    keep (active mode), so that at most one group of b's honest holders can ever be unmasked,
    whatever lists the server shows and whoever of the c tolerated colluders helps it.

    The server can only remove the masks of a group closed under partnership whose members all
    had their self-mask seed revealed, each after an honest party checked it. Two such disjoint
    groups of honest holders are impossible when (docs/protocol.md, "Active security on sparse
    graphs", lemmas 3 and 4):

    * D_b >= floor((|H_b| + c) / 2), with H_b all holders of b in the layout (not the survivors a
      list claims, which the server chooses): each group would need more than half the honest
      holders; or
    * D_b >= h + 1 + c on a Harary ring with n >= 3h + 1: two disjoint vertex sets of the ring
      graph cannot both keep h + 1 honest neighbours inside themselves.
    """
    c = config.tolerated_colluders
    # c + 1 partners keep at least two honest parties in any group (Lemma 4 with one group).
    floor = max(config.blocks.min_holders - 1 if config.part_wise else 1, c + 1)
    bound = (len(config.blocks.holders[block]) + c) // 2
    h = config.graph.ring_half_width
    if h is not None and config.num_parties >= 3 * h + 1:
        bound = min(bound, h + 1 + c)
    return max(floor, bound)


class AliveHolders:
    """|A_b| (surviving holders of block b), computed once per block and cached."""

    def __init__(self, config: RoundConfig, survivors: set[int]) -> None:
        self.config = config
        self.survivors = survivors
        self._counts: dict[int, int] = {}

    def __call__(self, block: int) -> int:
        count = self._counts.get(block)
        if count is None:
            holders = self.config.blocks.holders[block]
            count = sum(1 for h in holders if h in self.survivors)
            self._counts[block] = count
        return count


def weak_blocks(
    config: RoundConfig,
    party: int,
    survivors: set[int],
    surviving_peers: set[int],
    alive_holders: AliveHolders | None = None,
) -> list[int]:
    """Blocks of ``party`` whose sum would not hide its value. Semi-honest mode (and the legacy
    rule): fewer than ``min_holders`` surviving holders, or fewer than ``min_holders - 1``
    surviving partners of the party that hold the block (with a sparse graph those are the only
    masks protecting it: see :mod:`secagg.layout`). Active mode adds the connectivity degree
    :func:`connectivity_degree`. Empty when aggregation is not part-wise."""
    if not config.part_wise:
        return []
    layout = config.blocks
    count = alive_holders if alive_holders is not None else AliveHolders(config, survivors)
    strict = lemma_checks(config)
    weak = []
    for b in layout.holdings[party]:
        alive = count(b)
        need = connectivity_degree(config, b) if strict else layout.min_holders - 1
        masked_with = sum(1 for h in surviving_peers if b in layout.holding_sets[h])
        if alive < layout.min_holders or masked_with < need:
            weak.append(b)
    return weak


def lemma_checks(config: RoundConfig) -> bool:
    """Whether the degree rules of :func:`connectivity_degree` apply: in active mode (a server
    that may lie), and in semi-honest mode when colluders are tolerated (a colluder's pairwise
    masks are known to the server, so plain connectivity of the holders is not enough)."""
    return (config.active or config.tolerated_colluders > 0) and not consistency.legacy_rule()


def neighbourhood_view(config: RoundConfig) -> bool:
    """Whether unmask requests name only the recipient and its own partners (survived or
    dropped) instead of the whole survivor list.

    A party's answer depends only on its partners' fate unless it must check other parties'
    protection: in active mode it checks the signed global list, in part-wise rounds the
    surviving holders of blocks, and with tolerated colluders its partners' partners. In the
    remaining semi-honest whole-vector rounds the short list is SecAgg+'s O(log n) per-party
    communication (Bell et al. 2020, section 3) and costs O(k) instead of O(n) to build, send
    and check; the checks a party makes on it are the same (its partners all accounted for,
    none both alive and dropped, t of them alive). Parties accept either form.
    """
    return not config.active and not config.part_wise and config.tolerated_colluders == 0


def owner_partner_floor(config: RoundConfig) -> int:
    """The fewest surviving partners any revealed owner needs: t, and in whole-vector rounds
    under :func:`lemma_checks` also the connectivity degree of the one block."""
    if lemma_checks(config) and not config.part_wise:
        return max(config.threshold, connectivity_degree(config, 0))
    return config.threshold


def disconnected_blocks(
    config: RoundConfig, survivors: set[int], partners: dict[int, tuple[int, ...]]
) -> list[int]:
    """Blocks whose surviving holders are not connected by pairwise masks (partners that both
    hold the block). Unmasking such a block would hand even an honest-but-curious server the sum
    of each group separately (issue 8, item 2), so the server refuses it.

    Skipped where a lemma already guarantees connectivity (docs/protocol.md): whole-vector rounds
    where every survivor kept t surviving partners and either t >= h + 1 on a Harary ring with
    n >= 3h + 1, or 2(t + 1) > |U3| (two groups of t + 1 do not fit)."""
    t = config.threshold
    if not config.part_wise and config.tolerated_colluders == 0:
        h = config.graph.ring_half_width
        if 2 * (t + 1) > len(survivors) or (
            h is not None and t >= h + 1 and config.num_parties >= 3 * h + 1
        ):
            return []
    if not config.part_wise and config.graph.ring is not None:
        # ``partners`` is the server's own routing (neighbours in U2): the ring rule applies.
        return [] if _ring_survivors_connected(config, survivors) else [0]
    layout = config.blocks
    holds = layout.holding_sets
    split = []
    for b, holders in enumerate(layout.holders):
        alive = [u for u in holders if u in survivors]
        if len(alive) < 2:
            continue
        members = set(alive)
        seen = {alive[0]}
        frontier = [alive[0]]
        while frontier:
            u = frontier.pop()
            for w in partners.get(u, ()):
                if w in members and w not in seen and b in holds[w]:
                    seen.add(w)
                    frontier.append(w)
        if len(seen) != len(members):
            split.append(b)
    return split


def _ring_survivors_connected(config: RoundConfig, survivors: set[int]) -> bool:
    """Whole-vector rounds on a Harary ring, in O(n) numpy instead of a BFS over n k edges.

    Two survivors are partners exactly when their ring positions are at most h = k/2 apart
    (both were in U2, and the honest server routed every neighbour pair in U2). Walking the
    survivors in ring order, consecutive ones are joined unless the gap between them exceeds h,
    and nothing skips a gap; so the survivors are connected iff at most one of the circular
    gaps exceeds h (one broken link still leaves a path the other way round).
    """
    ring = config.graph.ring
    h = config.graph.ring_half_width
    assert ring is not None and h is not None
    n = config.num_parties
    if len(survivors) < 2:
        return True
    position = np.empty(n, dtype=np.int64)
    position[np.asarray(ring, dtype=np.int64)] = np.arange(n, dtype=np.int64)
    where = np.sort(position[np.fromiter(survivors, dtype=np.int64, count=len(survivors))])
    gaps = np.diff(where, append=where[0] + n)
    return int(np.count_nonzero(gaps > h)) <= 1


def client_unmask(
    config: RoundConfig,
    party: int,
    held: HeldShares,
    request: UnmaskRequest,
    signed_list: tuple[tuple[int, ...], tuple[int, ...]] | None,
) -> UnmaskResponse:
    """Answer an unmask request, or refuse it.

    Raises:
        RemoteProtocolError: overlapping or inconsistent lists, this party listed as dropped or
            missing, a neighbour it masked with left out (or one it never masked with listed),
            fewer than t surviving neighbours, a block that would be revealed for too few
            holders, or (active mode) a list other than the one it signed, a missing or invalid
            partner set, or a list not certified at every party its reveals depend on.
    """
    consistency.check_list_shape(config, party, request.survivors, request.dropped)
    survivors, dropped = set(request.survivors), set(request.dropped)
    if config.active:
        if signed_list is None or (request.survivors, request.dropped) != signed_list:
            raise RemoteProtocolError("survivor list differs from the one this party signed")
    elif request.signatures or request.partner_sets:
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
    # The partners of every owner whose self-mask share this party reveals. In active mode they
    # are the ones each owner signed (the server's routing decided them, so the graph says
    # nothing): a server that withheld deliveries to isolate an owner on a block is caught.
    # Semi-honest servers route as the protocol says.
    partners: dict[int, set[int]] = {party: peers}
    if config.active:
        signed = {p.party: p for p in request.partner_sets}
        for owner in surviving_peers:
            if owner not in signed:
                raise RemoteProtocolError(f"no signed partner set for party {owner}")
            partners[owner] = set(consistency.verified_partners(config, signed[owner]))
        if consistency.legacy_rule():
            consistency.verify_legacy(
                config, request.survivors, request.dropped, request.signatures
            )
        else:
            # Every reveal about v needs the list certified at v; b_v also at v's partners, so
            # the reveals about v and about its partners all come from this one list.
            depends_on = set(peers)
            for owner in surviving_peers:
                depends_on |= partners[owner]
            consistency.check_certified(
                config, request.survivors, request.dropped, request.signatures, depends_on
            )
    elif config.part_wise or lemma_checks(config):
        for owner in surviving_peers:
            partners[owner] = set(config.neighbors(owner))
    # Part-wise: revealing b_w unmasks w's blocks in the sums, so check the blocks of every
    # survivor whose self-mask share this party hands over, not only its own: otherwise a
    # malicious server could collect a thin block's sum from parties that do not hold it.
    alive_holders = AliveHolders(config, survivors)
    floor = owner_partner_floor(config)
    # Semi-honest whole-vector rounds without tolerated colluders: the server routes honestly
    # and checks every survivor itself; a party checks only its own protection.
    for owner in (o for o in (party, *surviving_peers) if o in partners):
        owner_peers = survivors & partners[owner]
        if len(owner_peers) < floor:
            raise RemoteProtocolError(
                f"party {owner} masked with only {len(owner_peers)} surviving partners"
            )
        weak = weak_blocks(config, owner, survivors, owner_peers, alive_holders)
        if weak:
            raise RemoteProtocolError(
                f"blocks {weak[:5]} of party {owner} would be revealed for fewer than"
                " min_holders surviving holders, or without the partners that keep the block's"
                " holders in one group"
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
        self._owner_ids: list[Sequence[int]] = []
        self._blobs: list[bytes] = []

    def append(self, holder: int, owners: Sequence[int], shares: Sequence[bytes]) -> None:
        """Record what ``holder`` revealed (checked by the caller)."""
        if not owners:
            return
        self._holders.append(holder)
        self._owner_ids.append(owners)
        self._blobs.append(b"".join(shares))

    def arrays(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint32]]:
        """(owner, holder, share limbs) of every revealed share, share limbs as (E, limbs)."""
        limbs = self.share_bytes // 4
        if not self._owner_ids:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros((0, limbs), dtype=np.uint32)
        counts = [len(o) for o in self._owner_ids]
        owners = np.fromiter(
            itertools.chain.from_iterable(self._owner_ids), dtype=np.int64, count=sum(counts)
        )
        holders = np.repeat(np.asarray(self._holders, dtype=np.int64), counts)
        shares = np.frombuffer(b"".join(self._blobs), dtype=">u4").reshape(-1, limbs)
        return owners, holders, shares

    def _materialize(self) -> dict[int, dict[int, bytes]]:
        out: dict[int, dict[int, bytes]] = {o: {} for o in self.owners}
        size = self.share_bytes
        for holder, owners, blob in zip(self._holders, self._owner_ids, self._blobs, strict=True):
            for i, owner in enumerate(owners):
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
        self._kind = [0] * n
        for u in self.survivors:
            self._kind[u] = 1
        for v in self.dropped:
            self._kind[v] = 2
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
            kinds = self._kind
            if not set(owners).issubset(mine) or any(kinds[o] != kind for o in owners):
                raise RemoteProtocolError(f"party {w} revealed a share it should not have")
            # A message's records all have one length (checked when it was built or decoded).
            if len(shares[0]) != store.share_bytes:
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
        alive = [k == 1 for k in self._kind]
        dropped_masks = []
        for v, sk in keys_.items():
            live = tuple((w, self.mask_public[w]) for w in self.peers[v] if alive[w])
            # The workers check each key against its advertised public key before using it.
            dropped_masks.append(DroppedPartyMasks(v, sk, live, self.mask_public[v]))
        # The workers also derive the self-mask stream seeds (one HKDF per survivor).
        self_seeds = [(u, seeds[u]) for u in self.survivors]
        mask = total_mask_parallel(
            ctx, self_seeds, dropped_masks, executor, workers, raw_self_seeds=True
        )
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
