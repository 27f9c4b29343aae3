"""The party's engine: a sans-I/O state machine (messages in, messages out).

Usage::

    client = ClientEngine(config, party=3)
    outgoing = client.start()                 # [AdvertiseKeys]
    outgoing = client.receive(message)        # whatever the server sent; returns replies
    outgoing = client.set_input(words)        # any time before the masking step

The host sends every returned message to ``message.recipient`` (always the server).
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

import numpy as np
import numpy.typing as npt

from secagg import messages as wire
from secagg.config import ClientPolicy, RoundConfig
from secagg.engine import consistency, masked_input, persist, share_keys, unmask
from secagg.engine._state import (
    CLIENT_TRANSITIONS_ACTIVE,
    CLIENT_TRANSITIONS_SEMI_HONEST,
    ClientState,
    GuardedEngine,
)
from secagg.engine.advertise import (
    KeyAgreement,
    PartySecrets,
    client_accept_directory,
    client_advertise,
)
from secagg.engine.share_keys import HeldShares
from secagg.errors import AbortedError, LocalProtocolError, ProtocolError, RemoteProtocolError
from secagg.messages import KeyEntry, Message

T = TypeVar("T")
STATE_VERSION = 1


class ClientEngine(GuardedEngine):
    """One party's side of one secure aggregation round.

    Args:
        config: the round's configuration (identical at every party and the server).
        party: this party's id in ``0..n-1``.
        signing_key: the party's long-term Ed25519 private key (active mode only).
        policy: the least this party accepts (threshold, neighbours, min_holders, active
            mode...); a configuration below it is refused before any key is drawn.

    Raises:
        LocalProtocolError: a party id outside the round, or active mode without a signing key.
        PolicyError: the configuration is below ``policy``.
    """

    def __init__(
        self,
        config: RoundConfig,
        party: int,
        *,
        signing_key: bytes | None = None,
        policy: ClientPolicy | None = None,
    ) -> None:
        if not isinstance(config, RoundConfig):
            raise LocalProtocolError(f"config must be a RoundConfig, got {type(config).__name__}")
        if isinstance(party, bool) or not isinstance(party, int):
            raise LocalProtocolError(f"party must be an integer id, got {party!r:.40}")
        if not 0 <= party < config.num_parties:
            raise LocalProtocolError(f"party id {party} is not in 0..{config.num_parties - 1}")
        if config.active and signing_key is None:
            raise LocalProtocolError("active mode needs the party's Ed25519 signing key")
        if policy is not None:
            policy.check(config, party)
        self.config = config
        self.party = party
        self._signing_key = signing_key
        self._transitions = (
            CLIENT_TRANSITIONS_ACTIVE if config.active else CLIENT_TRANSITIONS_SEMI_HONEST
        )
        self.state = ClientState.START
        self.error: ProtocolError | None = None
        # Phase results: each phase's output is the next phase's input.
        self._secrets: PartySecrets | None = None
        self._own_keys: KeyEntry | None = None
        self._agreement: KeyAgreement | None = None
        self._self_mask_seed: bytes | None = None
        self._receive_keys: dict[int, bytes] | None = None
        self._held: HeldShares | None = None
        self._input: npt.NDArray[np.unsignedinteger] | None = None
        self._signed_survivors: tuple[int, ...] | None = None
        self._signed_dropped: tuple[int, ...] | None = None

    # -- public API ------------------------------------------------------------------------

    def start(self) -> list[Message]:
        """Begin the round: draw keys and return the AdvertiseKeys message."""
        self._require(ClientState.START, "start()")
        secrets, message = self._guard(
            lambda: client_advertise(self.config, self.party, self._signing_key)
        )
        self._secrets, self._own_keys = secrets, message.keys
        self.state = ClientState.AWAIT_KEYS
        return [message]

    def set_input(self, words: npt.ArrayLike) -> list[Message]:
        """Provide the input vector, already encoded in Z_(2^B) (see :mod:`secagg.encoding`).

        Returns the MaskedInput message if the shares have already arrived, else nothing (it goes
        out as the reply to the share delivery).

        Raises:
            LocalProtocolError: wrong shape or range, input given twice, or too late.
        """
        if self.state is ClientState.FAILED:
            raise LocalProtocolError(f"this engine has failed: {self.error}")
        if self._input is not None:
            self._fail(LocalProtocolError("the input was already set"))
        if self.state not in (
            ClientState.START,
            ClientState.AWAIT_KEYS,
            ClientState.AWAIT_SHARES,
            ClientState.AWAIT_INPUT,
        ):
            self._fail(LocalProtocolError(f"cannot set the input in state {self.state.name}"))
        self._input = self._guard(lambda: masked_input.check_input(self.config, words, self.party))
        if self.state is ClientState.AWAIT_INPUT:
            return [self._send_masked_input()]
        return []

    def receive(self, message: Message | bytes) -> list[Message]:
        """Handle one message from the server and return the replies.

        Raises:
            RemoteProtocolError: malformed, misaddressed, out-of-phase or replayed message, or a
                request an honest party must refuse. The engine is then ``FAILED``.
            AbortedError: the server aborted the round.
            LocalProtocolError: the engine already failed or finished.
        """
        if self.state is ClientState.FAILED:
            raise LocalProtocolError(f"this engine has failed: {self.error}")
        if self.state is ClientState.DONE:
            raise LocalProtocolError(
                "the round is over for this engine; it accepts no more messages"
            )
        msg = self._guard(lambda: self._parse(message))
        if isinstance(msg, wire.Abort):
            self._fail(AbortedError(f"server aborted the round: {msg.reason}"))
        key = (self.state, msg.TYPE)
        if key not in self._transitions:
            self._fail(
                RemoteProtocolError(f"{msg.TYPE.name} is not expected in state {self.state.name}")
            )
        return self._guard(lambda: self._handle(msg))

    @property
    def failed(self) -> bool:
        return self.state is ClientState.FAILED

    # -- phases ----------------------------------------------------------------------------

    def _handle(self, msg: Message) -> list[Message]:
        next_state = self._transitions[(self.state, msg.TYPE)]
        out: list[Message] = []
        if isinstance(msg, wire.KeyDirectory):
            assert self._secrets is not None and self._own_keys is not None
            self._agreement = client_accept_directory(self.config, self.party, self._own_keys, msg)
            seed, receive_keys, shares_msg = share_keys.client_share_keys(
                self.config, self.party, self._secrets, self._agreement
            )
            self._self_mask_seed, self._receive_keys = seed, receive_keys
            out.append(shares_msg)
        elif isinstance(msg, wire.ShareDelivery):
            assert self._receive_keys is not None and self._self_mask_seed is not None
            self._held = share_keys.client_accept_delivery(
                self.config, self.party, self._receive_keys, self._self_mask_seed, msg
            )
            self._receive_keys = None
            if self._input is not None:
                self.state = next_state
                return [self._send_masked_input()]
        elif isinstance(msg, wire.SurvivorList):
            assert self._signing_key is not None and self._held is not None
            out.append(
                consistency.client_sign(
                    self.config,
                    self.party,
                    self._signing_key,
                    msg.survivors,
                    msg.dropped,
                    self._held.peers,
                )
            )
            self._signed_survivors, self._signed_dropped = msg.survivors, msg.dropped
        elif isinstance(msg, wire.UnmaskRequest):
            assert self._held is not None
            signed = (
                None
                if self._signed_survivors is None or self._signed_dropped is None
                else (self._signed_survivors, self._signed_dropped)
            )
            out.append(unmask.client_unmask(self.config, self.party, self._held, msg, signed))
            self._wipe()
        self.state = next_state
        return out

    def _send_masked_input(self) -> Message:
        secrets, agreement, held, words = self._secrets, self._agreement, self._held, self._input
        assert secrets and agreement and held and words is not None
        message = self._guard(
            lambda: masked_input.client_masked_input(
                self.config, self.party, secrets, agreement, held, words, self._signing_key
            )
        )
        # s_u and b_u have done their job: only the neighbours' shares can recover them now.
        self._secrets = None
        self._input = None
        self._self_mask_seed = None
        self._held = HeldShares(b"", held.self_mask_shares, held.mask_key_shares)
        self.state = ClientState.AWAIT_SURVIVORS
        return message

    # -- plumbing --------------------------------------------------------------------------

    def _parse(self, message: Message | bytes) -> Message:
        msg: Message = (
            wire.decode(message) if isinstance(message, (bytes, bytearray, memoryview)) else message
        )
        if not isinstance(msg, Message):
            raise LocalProtocolError("receive() takes a Message or its wire bytes")
        if msg.session_id != self.config.session_id or msg.round_index != self.config.round_index:
            raise RemoteProtocolError("message belongs to another session or round (replay?)")
        if msg.sender != wire.SERVER or msg.recipient != self.party:
            raise RemoteProtocolError("message is not from the server to this party")
        return msg

    def _require(self, state: ClientState, what: str) -> None:
        if self.state is ClientState.FAILED:
            raise LocalProtocolError(f"this engine has failed: {self.error}")
        if self.state is not state:
            self._fail(LocalProtocolError(f"{what} is only legal in state {state.name}"))

    def _fail(self, error: ProtocolError, cause: BaseException | None = None) -> NoReturn:
        if self.state is not ClientState.FAILED:
            self.state = ClientState.FAILED
            self.error = error
            self._wipe()
        raise error from cause

    def _wipe(self) -> None:
        """Drop every secret reference (Python cannot zero immutable bytes; see docs)."""
        self._secrets = None
        self._self_mask_seed = None
        self._receive_keys = None
        self._held = None
        self._input = None
        self._signing_key = None

    # -- persistence -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this engine later. Contains secrets: store it encrypted."""
        held = self._held
        return {
            "version": STATE_VERSION,
            "session_id": self.config.session_id,
            "round_index": self.config.round_index,
            "party": self.party,
            "state": self.state.value,
            "error": None if self.error is None else repr(self.error),
            "secrets": None
            if self._secrets is None
            else [self._secrets.mask_private, self._secrets.encryption_private],
            "own_keys": None if self._own_keys is None else wire.encode_key_entry(self._own_keys),
            "neighbors": None
            if self._agreement is None
            else [wire.encode_key_entry(e) for e in self._agreement.neighbors.values()],
            "self_mask_seed": self._self_mask_seed,
            "receive_keys": None if self._receive_keys is None else dict(self._receive_keys),
            "held": None
            if held is None
            else [held.self_mask_seed, dict(held.self_mask_shares), dict(held.mask_key_shares)],
            "input": None if self._input is None else self._input.tobytes(),
            "signed_survivors": None
            if self._signed_survivors is None
            else list(self._signed_survivors),
            "signed_dropped": None if self._signed_dropped is None else list(self._signed_dropped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same config and party).

        Raises:
            LocalProtocolError: the state belongs to another session, round, party or version,
                or this engine was already used (only a fresh engine can be restored: a failed
                or finished engine must never come back to life).
        """
        if self.state is not ClientState.START or self._secrets is not None or self.error:
            raise LocalProtocolError("load_state_dict() needs a fresh engine")
        if (
            state.get("version") != STATE_VERSION
            or state.get("session_id") != self.config.session_id
            or state.get("round_index") != self.config.round_index
            or state.get("party") != self.party
        ):
            raise LocalProtocolError("state dict does not belong to this engine")
        self.state = ClientState(state["state"])
        self.error = None if state["error"] is None else LocalProtocolError(state["error"])
        self._secrets = None if state["secrets"] is None else PartySecrets(*state["secrets"])
        self._own_keys = (
            None if state["own_keys"] is None else wire.decode_key_entry(state["own_keys"])
        )
        if state["neighbors"] is None or self._own_keys is None:
            self._agreement = None
        else:
            entries = [wire.decode_key_entry(b) for b in state["neighbors"]]
            self._agreement = KeyAgreement(self._own_keys, {e.party: e for e in entries})
        self._self_mask_seed = state["self_mask_seed"]
        self._receive_keys = None if state["receive_keys"] is None else dict(state["receive_keys"])
        self._held = None if state["held"] is None else HeldShares(*state["held"])
        dtype = masked_input.mask_context(self.config).dtype
        self._input = (
            None if state["input"] is None else np.frombuffer(state["input"], dtype=dtype).copy()
        )
        self._signed_survivors = (
            None if state["signed_survivors"] is None else tuple(state["signed_survivors"])
        )
        self._signed_dropped = (
            None if state.get("signed_dropped") is None else tuple(state["signed_dropped"])
        )

    def to_bytes(self, *, key: bytes | None = None, counter: int = 0) -> bytes:
        """:meth:`state_dict` as canonical bytes (:mod:`secagg.engine.persist`), sealed with
        AES-256-GCM when ``key`` is given.

        WARNING: without ``key`` the bytes hold this party's round secrets IN THE CLEAR: its
        X25519 private keys, its self-mask seed, the neighbours' Shamir shares it holds and its
        raw input vector. Whoever reads them (the server included) can unmask its input. Seal
        them, and give each sealed state of this engine a ``counter`` strictly greater than the
        last (:class:`~secagg.engine.persist.RollbackGuard`); see docs/persistence.md.

        Args:
            key: the host's 32-byte state key, or None for plaintext.
            counter: in [0, 2^64), bound into the sealed blob; must stay 0 without a key.

        Raises:
            StateError: a bad key, a counter out of range or given without a key.
        """
        identity = persist.client_identity(self.config, self.party)
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
            StateError: another role, session, round or party; a stale counter; a wrong key,
                tampered or truncated blob; a malformed encoding. The engine stays fresh.
            LocalProtocolError: this engine is not fresh.
        """
        identity = persist.client_identity(self.config, self.party)
        persist.load_state(self, identity, blob, key=key, min_counter=min_counter)
