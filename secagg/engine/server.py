"""The server's engine: a sans-I/O state machine that routes, sums and unmasks.

Usage::

    server = ServerEngine(config)
    for message in incoming:                  # from parties, in any order within a phase
        outgoing = server.receive(message)    # phase closes by itself when all expected arrived
    outgoing = server.close_phase()           # on the host's timeout: go on with who answered
    server.result                             # AggregationResult once DONE

Each returned message goes to ``message.recipient``.
"""

from __future__ import annotations

import bisect
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import numpy.typing as npt

from secagg import encoding
from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.crypto import keys
from secagg.engine import consistency, persist
from secagg.engine._state import SERVER_ACCEPTS, GuardedEngine, ServerState
from secagg.engine.advertise import KeyCollector
from secagg.engine.masked_input import MaskedSum
from secagg.engine.share_keys import ShareRouter
from secagg.engine.unmask import (
    AliveHolders,
    Unmasker,
    disconnected_blocks,
    neighbourhood_view,
    owner_partner_floor,
    weak_blocks,
)
from secagg.errors import AbortedError, LocalProtocolError, ProtocolError, RemoteProtocolError
from secagg.messages import Message, PartySignature

T = TypeVar("T")
STATE_VERSION = 1


@dataclass(frozen=True)
class AggregationResult:
    """The only thing the server learns: the sum of the survivors' inputs, and who they are.

    Attributes:
        total: sum over ``survivors`` of their inputs, in Z_(2^B) (word dtype). In part-wise
            mode, coordinate i is the sum over the surviving holders of i's block.
        survivors: U3, the parties whose inputs are in the sum.
        dropped: parties that shared keys but whose input is not in the sum.
        modulus_bits: B.
        block_survivors: per block, how many surviving holders its sum covers.
    """

    total: npt.NDArray[np.unsignedinteger]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    modulus_bits: int
    block_survivors: tuple[int, ...] = ()

    def signed(self) -> npt.NDArray[np.int64]:
        """The sum as signed integers (two's complement in Z_(2^B))."""
        return encoding.from_ring(self.total, self.modulus_bits)


class ServerEngine(GuardedEngine):
    """The server's side of one secure aggregation round.

    Args:
        config: the round's configuration.
        executor: optional process pool for mask regeneration in the unmasking step (keystream
            expansion holds the GIL, so threads do not help). The host owns it.
        workers: how many jobs to split the mask regeneration into.
    """

    def __init__(
        self, config: RoundConfig, *, executor: Executor | None = None, workers: int = 1
    ) -> None:
        self.config = config
        self.executor = executor
        self.workers = workers
        self.state = ServerState.COLLECT_KEYS
        self.error: ProtocolError | None = None
        self.result: AggregationResult | None = None
        self._keys = KeyCollector(config)
        self._router: ShareRouter | None = None
        self._sum: MaskedSum | None = None
        self._survivors: tuple[int, ...] = ()
        self._dropped: tuple[int, ...] = ()
        # D': the dropped parties some survivor masked with (only their mask keys are needed).
        self._unmask_dropped: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._unmasker: Unmasker | None = None
        self._peers: dict[int, tuple[int, ...]] = {}

    # -- public API ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the round finished and :attr:`result` holds the sum."""
        return self.state is ServerState.DONE

    @property
    def failed(self) -> bool:
        """True once the round failed or aborted (:attr:`error` says why)."""
        return self.state is ServerState.FAILED

    @property
    def expected(self) -> frozenset[int]:
        """Parties whose message the current phase still waits for."""
        if self.state is ServerState.COLLECT_KEYS:
            return frozenset(range(self.config.num_parties)) - self._keys.entries.keys()
        if self.state is ServerState.COLLECT_SHARES:
            assert self._router is not None
            return frozenset(self._router.present) - self._router.sealed.keys()
        if self.state is ServerState.COLLECT_MASKED_INPUTS:
            assert self._sum is not None
            return frozenset(self._sum.expected - self._sum.received)
        if self.state is ServerState.COLLECT_SIGNATURES:
            return frozenset(self._survivors) - self._signatures.keys()
        if self.state is ServerState.COLLECT_UNMASK:
            assert self._unmasker is not None
            return frozenset(self._unmasker.expected - self._unmasker.responders)
        return frozenset()

    def _waiting(self) -> int:
        """``len(self.expected)`` in O(1): every collector accepts only expected senders, once
        each, so the count is a difference of sizes (building the set per message made a
        phase quadratic in n)."""
        if self.state is ServerState.COLLECT_KEYS:
            return self.config.num_parties - len(self._keys.entries)
        if self.state is ServerState.COLLECT_SHARES:
            assert self._router is not None
            return len(self._router.present) - len(self._router.sealed)
        if self.state is ServerState.COLLECT_MASKED_INPUTS:
            assert self._sum is not None
            return len(self._sum.expected) - len(self._sum.received)
        if self.state is ServerState.COLLECT_SIGNATURES:
            return len(self._survivors) - len(self._signatures)
        if self.state is ServerState.COLLECT_UNMASK:
            assert self._unmasker is not None
            return len(self._unmasker.expected) - len(self._unmasker.responders)
        return 0

    def receive(self, message: Message | bytes) -> list[Message]:
        """Handle one party's message; returns the next phase's messages when this one completes.

        Raises:
            RemoteProtocolError: malformed, misaddressed, out-of-phase, replayed or invalid
                message. The engine is then ``FAILED`` (fail closed: nothing more is revealed).
            AbortedError: closing the phase left too few parties; ``error.notices`` holds the
                Abort messages for the remaining parties.
        """
        if self.state in (ServerState.FAILED, ServerState.DONE):
            raise LocalProtocolError(f"engine is {self.state.name}; it accepts no more messages")
        msg = self._guard(lambda: self._parse(message))
        if isinstance(msg, wire.Abort):
            # A party refused: in a safe protocol that party simply stops; treat it as dropped.
            return []
        if SERVER_ACCEPTS.get(self.state) is not msg.TYPE:
            self._fail(
                RemoteProtocolError(f"{msg.TYPE.name} is not expected in state {self.state.name}")
            )
        self._guard(lambda: self._accept(msg))
        if not self._waiting():
            return self.close_phase()
        return []

    def close_phase(self) -> list[Message]:
        """Close the current phase with whoever answered (the host's timeout), start the next.

        Raises:
            AbortedError: too few parties to continue safely.
            LocalProtocolError: nothing to close (finished or failed).
        """
        if self.state in (ServerState.FAILED, ServerState.DONE):
            raise LocalProtocolError(f"engine is {self.state.name}; no phase to close")
        return self._guard(self._advance)

    # -- phases ----------------------------------------------------------------------------

    def _accept(self, msg: Message) -> None:
        if isinstance(msg, wire.AdvertiseKeys):
            self._keys.add(msg)
        elif isinstance(msg, wire.EncryptedShares):
            assert self._router is not None
            self._router.add(msg)
        elif isinstance(msg, wire.MaskedInput):
            assert self._sum is not None
            self._sum.add(msg)
        elif isinstance(msg, wire.SurvivorSignature):
            if msg.sender not in self._survivors or msg.sender in self._signatures:
                raise RemoteProtocolError(f"unexpected survivor signature from {msg.sender}")
            assert self.config.verify_keys is not None
            payload = consistency.list_payload(self.config, self._survivors, self._unmask_dropped)
            if not keys.verify(self.config.verify_keys[msg.sender], msg.signature, payload):
                raise RemoteProtocolError(f"invalid survivor signature from {msg.sender}")
            self._signatures[msg.sender] = msg.signature
        elif isinstance(msg, wire.UnmaskResponse):
            assert self._unmasker is not None
            self._unmasker.add(msg)

    def _advance(self) -> list[Message]:
        cfg = self.config
        t = cfg.threshold
        if self.state is ServerState.COLLECT_KEYS:
            present = self._keys.entries
            self._need(len(present), t + 1, "parties advertised keys")
            directories = self._keys.directories()
            self._router = ShareRouter(cfg, self._keys.present_neighbors)
            self.state = ServerState.COLLECT_SHARES
            return list(directories.values())
        if self.state is ServerState.COLLECT_SHARES:
            assert self._router is not None
            self._need(len(self._router.sealed), t + 1, "parties shared keys")
            deliveries = self._router.deliveries()
            self._peers = {v: d.senders for v, d in deliveries.items()}
            self._sum = MaskedSum(cfg, set(deliveries), self._peers)
            self.state = ServerState.COLLECT_MASKED_INPUTS
            return list(deliveries.values())
        if self.state is ServerState.COLLECT_MASKED_INPUTS:
            assert self._sum is not None
            # Never output (or ask to unmask) a sum of fewer than t inputs.
            self._need(len(self._sum.received), t, "masked inputs arrived")
            self._survivors = tuple(sorted(self._sum.received))
            self._dropped = tuple(sorted(self._sum.expected - self._sum.received))
            alive = set(self._survivors)
            masked_with_survivor: set[int] = set()
            alive_holders = AliveHolders(cfg, alive)
            floor = owner_partner_floor(cfg)
            for u in self._survivors:
                # The conditions every honest party checks before answering: refuse early and
                # clearly instead of asking parties that will refuse.
                partners = self._peers.get(u, ())
                masked_with_survivor.update(partners)
                surviving_peers = alive.intersection(partners)
                if len(surviving_peers) < floor:
                    raise AbortedError(
                        f"party {u} has only {len(surviving_peers)} surviving neighbours, fewer"
                        f" than the {floor} it needs (threshold {t})"
                    )
                weak = (
                    weak_blocks(cfg, u, alive, surviving_peers, alive_holders)
                    if cfg.part_wise
                    else ()
                )
                if weak:
                    raise AbortedError(
                        f"blocks {weak[:5]} of party {u} would be revealed for fewer than"
                        " min_holders surviving holders, or without the partners that keep the"
                        " block's holders in one group"
                    )
            # Only the mask keys of dropped parties some survivor masked with are needed: asking
            # for the others could only lose the round for nothing.
            self._unmask_dropped = tuple(sorted(masked_with_survivor - alive))
            # An honest-but-curious server must not even be able to split a block's sum into
            # the sums of separate groups of holders: refuse to unmask a disconnected block.
            split = disconnected_blocks(cfg, alive, self._peers)
            if split:
                raise AbortedError(
                    f"the surviving holders of blocks {split[:5]} are not connected by masks:"
                    " unmasking would reveal the sums of separate groups"
                )
            if cfg.active:
                self.state = ServerState.COLLECT_SIGNATURES
                return [
                    wire.SurvivorList(
                        cfg.session_id,
                        cfg.round_index,
                        wire.SERVER,
                        u,
                        survivors=self._survivors,
                        dropped=self._unmask_dropped,
                    )
                    for u in self._survivors
                ]
            return self._start_unmask(self._survivors, ())
        if self.state is ServerState.COLLECT_SIGNATURES:
            self._need(len(self._signatures), t, "survivors signed the survivor list")
            # Every revealer will check the list is certified at each party its reveals depend
            # on (t signing neighbours): refuse early instead of asking parties that will refuse.
            certified = consistency.certification_counts(
                cfg, self._signatures, self._survivors + self._unmask_dropped
            )
            thin = sorted(x for x, c in certified.items() if c < t)
            if thin:
                raise AbortedError(
                    f"the survivor list is not certified at parties {thin[:5]}: fewer than {t}"
                    " of their neighbours signed it"
                )
            return self._start_unmask(tuple(sorted(self._signatures)), ())
        if self.state is ServerState.COLLECT_UNMASK:
            assert self._unmasker is not None and self._sum is not None
            total = self._unmasker.finish(self._sum.total, self.executor, self.workers)
            alive = set(self._survivors)
            counts = tuple(sum(1 for h in hs if h in alive) for hs in cfg.blocks.holders)
            self.result = AggregationResult(
                total, self._survivors, self._dropped, cfg.modulus_bits, counts
            )
            self._sum = None
            self._unmasker = None
            self.state = ServerState.DONE
            return []
        raise LocalProtocolError(
            f"no phase to close in state {self.state.name}"
        )  # pragma: no cover

    def _start_unmask(
        self, recipients: tuple[int, ...], signatures: tuple[PartySignature, ...]
    ) -> list[Message]:
        cfg = self.config
        self._unmasker = self._make_unmasker(set(recipients))
        self.state = ServerState.COLLECT_UNMASK
        partners: dict[int, wire.PartnerSet] = {}
        if cfg.active:
            # Each revealer gets the signed partner sets of its surviving neighbours: it checks
            # their blocks against the parties they really masked with.
            assert self._sum is not None
            for w in self._survivors:
                partners[w] = wire.PartnerSet(w, self._peers[w], self._sum.partner_signatures[w])
        router = consistency.SignatureRouter(cfg, self._signatures) if cfg.active else None
        if neighbourhood_view(cfg):
            # SecAgg+ (Bell et al. 2020, section 3): a party needs only its own partners' fate,
            # so the request costs O(k) to build, send and check instead of O(n) per party.
            # A survivor's partners all survived or are in D' (it masked with them).
            flags = bytearray(cfg.num_parties)
            for w in self._survivors:
                flags[w] = 1
            requests: list[Message] = []
            for u in recipients:
                alive_peers: list[int] = []
                dropped_peers: list[int] = []
                for w in self._peers[u]:
                    (alive_peers if flags[w] else dropped_peers).append(w)
                bisect.insort(alive_peers, u)
                requests.append(
                    wire.trusted(  # lists from the server's own state, sorted: no re-check
                        wire.UnmaskRequest,
                        cfg.session_id,
                        cfg.round_index,
                        wire.SERVER,
                        u,
                        survivors=tuple(alive_peers),
                        dropped=tuple(dropped_peers),
                    )
                )
            return requests
        return [
            wire.UnmaskRequest(
                cfg.session_id,
                cfg.round_index,
                wire.SERVER,
                u,
                survivors=self._survivors,
                dropped=self._unmask_dropped,
                signatures=router.for_recipient(u) if router is not None else signatures,
                partner_sets=tuple(partners[w] for w in self._peers[u] if w in partners),
            )
            for u in recipients
        ]

    def _make_unmasker(self, expected: set[int]) -> Unmasker:
        entries = self._keys.entries
        return Unmasker(
            self.config,
            self._survivors,
            self._unmask_dropped,
            self._peers,
            {u: entries[u].mask_public for u in self._peers},
            expected,
            self._router.commitments if self._router is not None else None,
        )

    def _need(self, have: int, need: int, what: str) -> None:
        if have < need:
            raise AbortedError(f"only {have} {what}; at least {need} are needed")

    # -- plumbing --------------------------------------------------------------------------

    def _parse(self, message: Message | bytes) -> Message:
        msg: Message = (
            wire.decode(message) if isinstance(message, (bytes, bytearray, memoryview)) else message
        )
        if not isinstance(msg, Message):
            raise LocalProtocolError("receive() takes a Message or its wire bytes")
        if msg.session_id != self.config.session_id or msg.round_index != self.config.round_index:
            raise RemoteProtocolError("message belongs to another session or round (replay?)")
        if msg.recipient != wire.SERVER or not 0 <= msg.sender < self.config.num_parties:
            raise RemoteProtocolError("message is not from a party of this round to the server")
        return msg

    def _fail(self, error: ProtocolError, cause: BaseException | None = None) -> NoReturn:
        if self.state is not ServerState.FAILED:
            cohort = self._cohort()
            self.state = ServerState.FAILED
            self.error = error
            self._sum = None
            self._unmasker = None
            if isinstance(error, AbortedError):
                error.notices = [  # type: ignore[attr-defined]
                    wire.Abort(
                        self.config.session_id,
                        self.config.round_index,
                        wire.SERVER,
                        u,
                        reason=str(error)[:500],
                    )
                    for u in sorted(cohort)
                ]
        raise error from cause

    def _cohort(self) -> set[int]:
        if self._unmasker is not None:
            return set(self._unmasker.expected)
        if self._sum is not None:
            return set(self._sum.expected)
        if self._router is not None:
            return set(self._router.present)
        return set(self._keys.entries)

    # -- persistence -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the server later (plain Python values and bytes).

        It holds no party secret until the unmasking phase, where it holds revealed shares.
        """
        router, total, unmasker = self._router, self._sum, self._unmasker
        return {
            "version": STATE_VERSION,
            "session_id": self.config.session_id,
            "round_index": self.config.round_index,
            "state": self.state.value,
            "error": None if self.error is None else repr(self.error),
            "keys": [wire.encode_key_entry(e) for e in self._keys.entries.values()],
            "router": None
            if router is None
            else {
                "present": {u: list(v) for u, v in router.present.items()},
                "sealed": {u: list(c) for u, c in router.sealed.items()},
                "commitments": dict(router.commitments),
            },
            "peers": {u: list(v) for u, v in self._peers.items()},
            "sum": None
            if total is None
            else {
                "expected": sorted(total.expected),
                "received": sorted(total.received),
                "total": total.total.tobytes(),
                "partner_signatures": dict(total.partner_signatures),
            },
            "survivors": list(self._survivors),
            "dropped": list(self._dropped),
            "unmask_dropped": list(self._unmask_dropped),
            "signatures": dict(self._signatures),
            "unmask": None
            if unmasker is None
            else {
                "expected": sorted(unmasker.expected),
                "responders": sorted(unmasker.responders),
                "self_mask_shares": {u: dict(h) for u, h in unmasker.self_mask_shares.items()},
                "mask_key_shares": {u: dict(h) for u, h in unmasker.mask_key_shares.items()},
            },
            "result": None
            if self.result is None
            else {
                "total": self.result.total.tobytes(),
                "survivors": list(self.result.survivors),
                "dropped": list(self.result.dropped),
                "block_survivors": list(self.result.block_survivors),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same config).

        Raises:
            LocalProtocolError: the state belongs to another session, round or version, or this
                engine was already used (only a fresh engine can be restored).
        """
        cfg = self.config
        if self.state is not ServerState.COLLECT_KEYS or self._keys.entries or self.error:
            raise LocalProtocolError("load_state_dict() needs a fresh engine")
        if (
            state.get("version") != STATE_VERSION
            or state.get("session_id") != cfg.session_id
            or state.get("round_index") != cfg.round_index
        ):
            raise LocalProtocolError("state dict does not belong to this engine")
        dtype = encoding.word_dtype(cfg.modulus_bits)
        self.state = ServerState(state["state"])
        self.error = None if state["error"] is None else LocalProtocolError(state["error"])
        self._keys = KeyCollector(cfg)
        for raw in state["keys"]:
            entry = wire.decode_key_entry(raw)
            self._keys.entries[entry.party] = entry
        self._router = None
        if state["router"] is not None:
            present = {int(u): tuple(v) for u, v in state["router"]["present"].items()}
            self._router = ShareRouter(cfg, present)
            self._router.sealed = {int(u): tuple(c) for u, c in state["router"]["sealed"].items()}
            self._router.commitments = {
                int(u): bytes(c) for u, c in state["router"]["commitments"].items()
            }
        self._peers = {int(u): tuple(v) for u, v in state["peers"].items()}
        self._sum = None
        if state["sum"] is not None:
            self._sum = MaskedSum(cfg, set(state["sum"]["expected"]), self._peers)
            self._sum.received = set(state["sum"]["received"])
            self._sum.partner_signatures = {
                int(u): bytes(v) for u, v in state["sum"]["partner_signatures"].items()
            }
            self._sum.total = np.frombuffer(state["sum"]["total"], dtype=dtype).copy()
        self._survivors = tuple(state["survivors"])
        self._dropped = tuple(state["dropped"])
        self._unmask_dropped = tuple(state["unmask_dropped"])
        self._signatures = dict(state["signatures"])
        self._unmasker = None
        if state["unmask"] is not None:
            self._unmasker = self._make_unmasker(set(state["unmask"]["expected"]))
            self._unmasker.responders = set(state["unmask"]["responders"])
            for name in ("self_mask_shares", "mask_key_shares"):
                store = getattr(self._unmasker, name)
                for owner, held in state["unmask"][name].items():
                    store[int(owner)] = {int(h): bytes(v) for h, v in held.items()}
        self.result = None
        if state["result"] is not None:
            self.result = AggregationResult(
                np.frombuffer(state["result"]["total"], dtype=dtype).copy(),
                tuple(state["result"]["survivors"]),
                tuple(state["result"]["dropped"]),
                cfg.modulus_bits,
                tuple(state["result"]["block_survivors"]),
            )

    def to_bytes(self, *, key: bytes | None = None, counter: int = 0) -> bytes:
        """:meth:`state_dict` as canonical bytes (:mod:`secagg.engine.persist`), sealed with
        AES-256-GCM when ``key`` is given.

        WARNING: without ``key`` the bytes are readable and forgeable by whoever stores them.
        They hold nothing the server itself may not see, but more than outsiders should: the
        running sum of masked inputs, the revealed Shamir shares (b_u of survivors, s_v of
        dropped parties) that unmask it, and the round's result. A forged or rolled back state
        can make the server accept replayed messages or output a wrong sum. Seal them with a
        ``counter`` strictly greater than the last
        (:class:`~secagg.engine.persist.RollbackGuard`); see docs/persistence.md.

        Args:
            key: the host's 32-byte state key, or None for plaintext.
            counter: in [0, 2^64), bound into the sealed blob; must stay 0 without a key.

        Raises:
            StateError: a bad key, a counter out of range or given without a key.
        """
        identity = persist.server_identity(self.config)
        return persist.dump_state(self.state_dict(), identity, key=key, counter=counter)

    def load_bytes(
        self,
        blob: bytes,
        *,
        key: bytes | None = None,
        min_counter: int | persist.RollbackGuard = 0,
    ) -> None:
        """Restore this fresh engine from :meth:`to_bytes`, all or nothing.

        Args:
            blob: the stored bytes.
            key: the key the blob was sealed with; None only for a plaintext blob (with a key, a
                plaintext blob is refused).
            min_counter: the lowest counter accepted, or a ``RollbackGuard`` that accepts only
                a counter above every one it saw opened and records this one.

        Raises:
            StateError: a client's state, another session or round, a stale counter, a wrong
                key, tampered or truncated blob, a malformed encoding. The engine stays fresh.
            LocalProtocolError: this engine is not fresh.
        """
        persist.load_state(
            self, persist.server_identity(self.config), blob, key=key, min_counter=min_counter
        )
