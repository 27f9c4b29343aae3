"""States of the client and server engines, and the one table of legal transitions.

Theory of operation
===================
One round of secure aggregation (Bonawitz et al., CCS 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", section 4; with the sparse neighbour graph of Bell et al.,
CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", section 3). Parties
talk only to the server; the server routes what parties send each other. U1 >= U2 >= U3 >= U4 are
the parties still present after each phase.

1. **AdvertiseKeys.** Each party u draws two X25519 key pairs: (c_u, C_u) to encrypt shares and
   (s_u, S_u) to agree pairwise masks; in active mode it signs (session, round, u, C_u, S_u) with
   its long-term Ed25519 key. The server sends each party the keys of its neighbours in U1.
   *Party knows:* its neighbours' public keys. *Check:* at least t neighbours are present (with
   fewer, its secrets could not be recovered and its input could not be hidden); every signature
   verifies (else a man-in-the-middle server could substitute keys).
2. **ShareKeys.** u draws a self-mask seed b_u and Shamir-shares b_u and s_u (threshold t) among
   its neighbours in U1, each share pair sealed with AES-GCM under a key derived from
   X25519(c_u, C_v), with associated data binding session, round, sender and receiver. The server
   routes the ciphertexts. *Server knows:* only ciphertexts. *Check:* u accepts shares only from
   its neighbours, each authenticated for exactly (sender -> u) in this round.
3. **MaskedInputCollection.** For every neighbour v in U2 (those whose shares u received),
   s_uv = HKDF(X25519(s_u, S_v)) and
   y_u = x_u + PRG(b_u) + sum_{v in U2 n N(u), u<v} PRG(s_uv) - sum_{v, u>v} PRG(s_uv) mod 2^B.
   Then u forgets s_u and b_u: only the shares held by others can recover them.
   *Server knows:* y_u, uniformly distributed as long as b_u stays secret.
4. **ConsistencyCheck** (active mode only). The server sends L = (U3, D'), D' the dropped
   parties some survivor masked with; each party signs L (bound to the configuration digest)
   once. The unmask request carries signatures that *certify* L at every party the recipient's
   reveals depend on: t signers from that party's own neighbourhood. With 2t > k + c two lists
   cannot both be certified at one party, so every reveal about v, and about v's partners, uses
   one list (Bonawitz et al., section 4, round 3, extended to sparse graphs: docs/protocol.md,
   "Active security on sparse graphs").
5. **Unmasking.** The server sends (survivors U3, dropped U2 \\ U3). For each neighbour v, an
   honest party reveals **exactly one** kind of share: b_v if v survived, s_v if v dropped; never
   both, because the pair would unmask y_v entirely. It refuses (and the round aborts) when the
   lists overlap, omit or invent a neighbour it masked with, exclude itself, leave it fewer than t
   surviving neighbours, or (active mode) differ from what it signed, are not certified where
   its reveals depend, or leave an owner's block with fewer than D_b surviving partners.
   The server reconstructs each b_v (v in U3) and each s_v (v dropped), removes PRG(b_v) and the
   dropped parties' pairwise masks, and outputs sum_{u in U3} x_u mod 2^B; it refuses to output
   anything for fewer than t survivors.

Both engines are state machines: every incoming message type is legal in exactly the states this
module's tables list. Anything else is an out-of-phase (or replayed) message and moves the engine
into ``FAILED`` for good, dropping its secrets.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NoReturn, TypeVar

from secagg.errors import LocalProtocolError, ProtocolError
from secagg.messages import MessageType

T = TypeVar("T")


class ClientState(enum.Enum):
    """A party's engine states, in protocol order."""

    #: Built; :meth:`ClientEngine.start` sends AdvertiseKeys.
    START = "start"
    #: AdvertiseKeys sent; waiting for the neighbours' keys (KeyDirectory).
    AWAIT_KEYS = "await_keys"
    #: Encrypted shares sent; waiting for the neighbours' shares (ShareDelivery).
    AWAIT_SHARES = "await_shares"
    #: Shares received but no input vector yet; :meth:`ClientEngine.set_input` sends MaskedInput.
    AWAIT_INPUT = "await_input"
    #: Masked input sent; waiting for the survivor list (active) or the unmask request.
    AWAIT_SURVIVORS = "await_survivors"
    #: (Active mode) survivor list signed; waiting for the unmask request.
    AWAIT_UNMASK = "await_unmask"
    #: Unmask response sent: the round is over for this party.
    DONE = "done"
    #: A protocol error happened; secrets are dropped and every call is refused.
    FAILED = "failed"


class ServerState(enum.Enum):
    """The server's engine states, in protocol order."""

    COLLECT_KEYS = "collect_keys"
    COLLECT_SHARES = "collect_shares"
    COLLECT_MASKED_INPUTS = "collect_masked_inputs"
    COLLECT_SIGNATURES = "collect_signatures"
    COLLECT_UNMASK = "collect_unmask"
    DONE = "done"
    FAILED = "failed"


_COMMON: dict[tuple[ClientState, MessageType], ClientState] = {
    (ClientState.AWAIT_KEYS, MessageType.KEY_DIRECTORY): ClientState.AWAIT_SHARES,
    # Lands in AWAIT_SURVIVORS instead when the input was set early (the masked input goes out).
    (ClientState.AWAIT_SHARES, MessageType.SHARE_DELIVERY): ClientState.AWAIT_INPUT,
}

#: (state, incoming message type) -> next state, semi-honest mode.
CLIENT_TRANSITIONS_SEMI_HONEST: dict[tuple[ClientState, MessageType], ClientState] = {
    **_COMMON,
    (ClientState.AWAIT_SURVIVORS, MessageType.UNMASK_REQUEST): ClientState.DONE,
}

#: (state, incoming message type) -> next state, active mode: the unmask request is legal only
#: after the party signed the survivor list (ConsistencyCheck cannot be skipped by the server).
CLIENT_TRANSITIONS_ACTIVE: dict[tuple[ClientState, MessageType], ClientState] = {
    **_COMMON,
    (ClientState.AWAIT_SURVIVORS, MessageType.SURVIVOR_LIST): ClientState.AWAIT_UNMASK,
    (ClientState.AWAIT_UNMASK, MessageType.UNMASK_REQUEST): ClientState.DONE,
}

#: The one message type the server accepts in each collecting state.
SERVER_ACCEPTS: dict[ServerState, MessageType] = {
    ServerState.COLLECT_KEYS: MessageType.ADVERTISE_KEYS,
    ServerState.COLLECT_SHARES: MessageType.ENCRYPTED_SHARES,
    ServerState.COLLECT_MASKED_INPUTS: MessageType.MASKED_INPUT,
    ServerState.COLLECT_SIGNATURES: MessageType.SURVIVOR_SIGNATURE,
    ServerState.COLLECT_UNMASK: MessageType.UNMASK_RESPONSE,
}


class GuardedEngine:
    """What both engines share: every action runs under :meth:`_guard`, so any error, ours or
    the peer's, ends in the terminal state through the engine's own :meth:`_fail`."""

    def _fail(self, error: ProtocolError, cause: BaseException | None = None) -> NoReturn:
        raise NotImplementedError  # pragma: no cover

    def _guard(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except ProtocolError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug is still a failure: never continue after it
            self._fail(LocalProtocolError(f"internal error: {exc!r}"), cause=exc)
