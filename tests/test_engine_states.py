"""The client and server state machines, table-driven over every (state, message type) pair.

Ground truth is secagg.engine._state: CLIENT_TRANSITIONS_SEMI_HONEST / CLIENT_TRANSITIONS_ACTIVE
and SERVER_ACCEPTS. Every other pair is an out-of-phase (or replayed) message: RemoteProtocolError,
the engine FAILED for good with its secrets dropped, and every later call a LocalProtocolError.
Also: misaddressed / foreign / garbage messages, input validation, Abort handling, the server's
abort notices, and client persistence (state_dict / load_state_dict) at every phase.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import Router, decoded, make_config, plain_sum, random_inputs

from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.engine import ClientEngine, ServerEngine
from secagg.engine._state import (
    CLIENT_TRANSITIONS_ACTIVE,
    CLIENT_TRANSITIONS_SEMI_HONEST,
    SERVER_ACCEPTS,
    ClientState,
    ServerState,
)
from secagg.errors import AbortedError, LocalProtocolError, ProtocolError, RemoteProtocolError
from secagg.messages import SERVER, MessageType

N, T, DIM, BITS = 4, 2, 8, 16
ME = 0  # the client under test
PEER = 1  # the party whose messages the server under test receives

#: Secret-bearing attributes; ``_receive_keys`` (share-opening AES keys) where the engine has it.
SECRET_ATTRS = ("_secrets", "_held", "_self_mask_seed", "_input", "_signing_key", "_receive_keys")

CLIENT_STATES = {
    False: [s for s in ClientState if s is not ClientState.AWAIT_UNMASK],
    True: list(ClientState),
}
SERVER_STATES = {
    False: [s for s in ServerState if s is not ServerState.COLLECT_SIGNATURES],
    True: list(ServerState),
}
TERMINAL_CLIENT = (ClientState.DONE, ClientState.FAILED)
TERMINAL_SERVER = (ServerState.DONE, ServerState.FAILED)


def _rehead(msg: wire.Message, sender: int, recipient: int) -> wire.Message:
    """The same message with another header (bypassing validation only where it must)."""
    try:
        return dataclasses.replace(msg, sender=sender, recipient=recipient)
    except ValueError:  # AdvertiseKeys binds keys.party to the sender
        out = copy.copy(msg)
        object.__setattr__(out, "sender", sender)
        object.__setattr__(out, "recipient", recipient)
        return out


def _as_wire(msg: wire.Message) -> wire.Message | bytes:
    """Wire bytes of ``msg`` when they decode, else the object (for re-headed AdvertiseKeys)."""
    data = wire.encode(msg)
    try:
        wire.decode(data)
    except wire.MessageDecodeError:
        return msg
    return data


@dataclass
class World:
    """Snapshots of one small honest round: the client ME in every state, the server in every
    state, and a well-formed message of every type for each of them."""

    config: RoundConfig
    signing: list[bytes] | None
    inputs: dict[int, np.ndarray]
    client: dict[ClientState, ClientEngine]
    to_client: dict[MessageType, wire.Message]
    server: dict[ServerState, ServerEngine]
    to_server: dict[MessageType, wire.Message]
    legal_for_server: dict[ServerState, wire.Message]


@functools.lru_cache(maxsize=2)
def world(active: bool) -> World:
    config, signing = make_config(N, t=T, dim=DIM, bits=BITS, active=active)
    inputs = random_inputs(N, DIM, BITS, seed=7)
    r = Router(config, signing, inputs, input_early=False)
    client: dict[ClientState, ClientEngine] = {ClientState.START: copy.deepcopy(r.clients[ME])}
    server: dict[ServerState, ServerEngine] = {ServerState.COLLECT_KEYS: copy.deepcopy(r.server)}
    to_client: dict[MessageType, wire.Message] = {}
    legal: dict[ServerState, wire.Message] = {}
    peer_sent: dict[MessageType, wire.Message] = {}
    peer_got: dict[MessageType, wire.Message] = {}

    def peer_reply(msg: wire.Message) -> wire.Message:
        peer = copy.deepcopy(r.clients[PEER])
        out = peer.receive(wire.encode(msg)) or peer.set_input(inputs[PEER])
        assert len(out) == 1
        return out[0]

    def snap_server_phase() -> None:
        server[r.server.state] = copy.deepcopy(r.server)
        msg = r.pending_for(PEER)
        peer_got[msg.TYPE] = msg
        legal[r.server.state] = peer_reply(msg)

    r.start()
    legal[ServerState.COLLECT_KEYS] = decoded(r.server_inbox, wire.AdvertiseKeys)[PEER]
    client[ClientState.AWAIT_KEYS] = copy.deepcopy(r.clients[ME])
    to_client[MessageType.KEY_DIRECTORY] = r.pending_for(ME)
    assert r.server.state is ServerState.COLLECT_SHARES
    snap_server_phase()

    r.step()
    assert r.server.state is ServerState.COLLECT_MASKED_INPUTS
    client[ClientState.AWAIT_SHARES] = copy.deepcopy(r.clients[ME])
    to_client[MessageType.SHARE_DELIVERY] = r.pending_for(ME)
    waiting = copy.deepcopy(r.clients[ME])
    assert waiting.receive(wire.encode(r.pending_for(ME))) == []
    client[ClientState.AWAIT_INPUT] = waiting
    snap_server_phase()

    r.step()
    client[ClientState.AWAIT_SURVIVORS] = copy.deepcopy(r.clients[ME])
    if active:
        assert r.server.state is ServerState.COLLECT_SIGNATURES
        to_client[MessageType.SURVIVOR_LIST] = r.pending_for(ME)
        snap_server_phase()
        r.step()
        client[ClientState.AWAIT_UNMASK] = copy.deepcopy(r.clients[ME])
    else:
        to_client[MessageType.SURVIVOR_LIST] = wire.SurvivorList(
            config.session_id, config.round_index, SERVER, ME, survivors=tuple(range(N))
        )
    assert r.server.state is ServerState.COLLECT_UNMASK
    to_client[MessageType.UNMASK_REQUEST] = r.pending_for(ME)
    snap_server_phase()

    out = r.run()
    assert out.result is not None
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, range(N), BITS))
    client[ClientState.DONE] = copy.deepcopy(r.clients[ME])
    server[ServerState.DONE] = copy.deepcopy(r.server)

    failed_client = copy.deepcopy(client[ClientState.AWAIT_KEYS])
    with pytest.raises(RemoteProtocolError):
        failed_client.receive(b"garbage")
    client[ClientState.FAILED] = failed_client
    failed_server = copy.deepcopy(server[ServerState.COLLECT_SHARES])
    with pytest.raises(RemoteProtocolError):
        failed_server.receive(b"garbage")
    server[ServerState.FAILED] = failed_server

    # Everything party PEER sent, and everything the server sent to PEER.
    for data in out.server_inbox:
        m = wire.decode(data)
        if m.sender == PEER:
            peer_sent.setdefault(m.TYPE, m)
    for m in legal.values():
        peer_sent.setdefault(m.TYPE, m)
    if not active:
        peer_sent[MessageType.SURVIVOR_SIGNATURE] = wire.SurvivorSignature(
            config.session_id, config.round_index, PEER, SERVER, signature=os.urandom(64)
        )
        peer_got[MessageType.SURVIVOR_LIST] = to_client[MessageType.SURVIVOR_LIST]
    peer_got[MessageType.KEY_DIRECTORY] = to_client[MessageType.KEY_DIRECTORY]

    sid, rnd = config.session_id, config.round_index
    to_client[MessageType.ABORT] = wire.Abort(sid, rnd, SERVER, ME, reason="server gives up")
    to_server: dict[MessageType, wire.Message] = {
        MessageType.ABORT: wire.Abort(sid, rnd, PEER, SERVER, reason="party gives up")
    }
    for mtype, m in peer_sent.items():
        to_client.setdefault(mtype, _rehead(m, SERVER, ME))
        to_server[mtype] = m
    for mtype, m in peer_got.items():
        to_server.setdefault(mtype, _rehead(m, PEER, SERVER))
    assert set(to_client) == set(MessageType) == set(to_server)
    return World(config, signing, inputs, client, to_client, server, to_server, legal)


def assert_wiped(engine: ClientEngine) -> None:
    for name in SECRET_ATTRS:
        assert getattr(engine, name, None) is None, name


def assert_dead_client(engine: ClientEngine, w: World) -> None:
    """A FAILED client refuses every call with LocalProtocolError and stays FAILED."""
    assert engine.state is ClientState.FAILED and engine.failed
    assert isinstance(engine.error, ProtocolError)
    assert_wiped(engine)
    for mtype in (MessageType.KEY_DIRECTORY, MessageType.UNMASK_REQUEST, MessageType.ABORT):
        with pytest.raises(LocalProtocolError):
            engine.receive(wire.encode(w.to_client[mtype]))
    with pytest.raises(LocalProtocolError):
        engine.start()
    with pytest.raises(LocalProtocolError):
        engine.set_input(w.inputs[ME])
    assert engine.state is ClientState.FAILED
    assert_wiped(engine)


# -- client table -----------------------------------------------------------------------------


CLIENT_CASES = [
    pytest.param(
        active, state, mtype, id=f"{'active' if active else 'semi'}-{state.name}-{mtype.name}"
    )
    for active in (False, True)
    for state in CLIENT_STATES[active]
    for mtype in MessageType
]


@pytest.mark.parametrize(("active", "state", "mtype"), CLIENT_CASES)
def test_client_state_table(active: bool, state: ClientState, mtype: MessageType) -> None:
    w = world(active)
    table = CLIENT_TRANSITIONS_ACTIVE if active else CLIENT_TRANSITIONS_SEMI_HONEST
    engine = copy.deepcopy(w.client[state])
    msg = w.to_client[mtype]
    assert msg.recipient == ME and msg.sender == SERVER
    assert msg.session_id == w.config.session_id and msg.round_index == w.config.round_index

    if state in TERMINAL_CLIENT:
        with pytest.raises(LocalProtocolError):
            engine.receive(_as_wire(msg))
        assert engine.state is state
        return
    if mtype is MessageType.ABORT:
        with pytest.raises(AbortedError):
            engine.receive(_as_wire(msg))
        assert_dead_client(engine, w)
        return
    if (state, mtype) in table:
        out = engine.receive(_as_wire(msg))
        assert engine.state is table[(state, mtype)]
        expected_reply = {
            MessageType.KEY_DIRECTORY: [wire.EncryptedShares],
            MessageType.SHARE_DELIVERY: [],  # no input yet: AWAIT_INPUT
            MessageType.SURVIVOR_LIST: [wire.SurvivorSignature],
            MessageType.UNMASK_REQUEST: [wire.UnmaskResponse],
        }[mtype]
        assert [type(m) for m in out] == expected_reply
        for m in out:
            assert (m.sender, m.recipient) == (ME, SERVER)
            wire.decode(wire.encode(m))  # a valid wire message
        if engine.state is ClientState.DONE:
            assert_wiped(engine)
        return
    with pytest.raises(RemoteProtocolError):
        engine.receive(_as_wire(msg))
    assert_dead_client(engine, w)


def test_client_table_covers_declared_transitions() -> None:
    """Every declared transition is exercised with a real message by the table above."""
    for active, table in (
        (False, CLIENT_TRANSITIONS_SEMI_HONEST),
        (True, CLIENT_TRANSITIONS_ACTIVE),
    ):
        for state, mtype in table:
            assert state in CLIENT_STATES[active] and mtype in MessageType
            assert mtype in world(active).to_client


def test_share_delivery_with_early_input_sends_masked_input() -> None:
    """The documented exception to the table: input set early -> straight to AWAIT_SURVIVORS."""
    for active in (False, True):
        w = world(active)
        engine = copy.deepcopy(w.client[ClientState.AWAIT_SHARES])
        assert engine.set_input(w.inputs[ME]) == []
        out = engine.receive(wire.encode(w.to_client[MessageType.SHARE_DELIVERY]))
        assert [type(m) for m in out] == [wire.MaskedInput]
        assert engine.state is ClientState.AWAIT_SURVIVORS
        # b_u, s_u and the input are forgotten once the masked input is out.
        assert engine._secrets is None and engine._input is None
        assert engine._self_mask_seed is None


# -- server table -----------------------------------------------------------------------------


SERVER_CASES = [
    pytest.param(
        active, state, mtype, id=f"{'active' if active else 'semi'}-{state.name}-{mtype.name}"
    )
    for active in (False, True)
    for state in SERVER_STATES[active]
    for mtype in MessageType
]


@pytest.mark.parametrize(("active", "state", "mtype"), SERVER_CASES)
def test_server_state_table(active: bool, state: ServerState, mtype: MessageType) -> None:
    w = world(active)
    server = copy.deepcopy(w.server[state])
    msg = w.to_server[mtype]
    if SERVER_ACCEPTS.get(state) is mtype:
        msg = w.legal_for_server[state]  # the peer's real message for this phase
    assert (msg.sender, msg.recipient) == (PEER, SERVER)
    data = wire.encode(msg)

    if state in TERMINAL_SERVER:
        with pytest.raises(LocalProtocolError):
            server.receive(data)
        with pytest.raises(LocalProtocolError):
            server.close_phase()
        assert server.state is state
        return
    if mtype is MessageType.ABORT:
        # A party that refuses is treated as dropped: nothing changes until the phase closes.
        before = server.expected
        assert server.receive(data) == []
        assert server.state is state and server.expected == before
        return
    if SERVER_ACCEPTS.get(state) is mtype:
        assert PEER in server.expected
        assert server.receive(data) == []  # n=4: the phase is not complete yet
        assert server.state is state
        assert PEER not in server.expected
        return
    with pytest.raises(RemoteProtocolError):
        server.receive(data)
    assert_dead_server(server, w)


def assert_dead_server(server: ServerEngine, w: World) -> None:
    assert server.state is ServerState.FAILED
    assert isinstance(server.error, ProtocolError)
    assert server.result is None
    assert server._sum is None and server._unmasker is None
    for mtype in MessageType:
        with pytest.raises(LocalProtocolError):
            server.receive(wire.encode(w.to_server[mtype]))
    with pytest.raises(LocalProtocolError):
        server.close_phase()
    assert server.state is ServerState.FAILED


# -- addressing, replay, garbage --------------------------------------------------------------


def _client_variants(w: World) -> dict[str, wire.Message | bytes]:
    kd = w.to_client[MessageType.KEY_DIRECTORY]
    other = os.urandom(16)
    good = wire.encode(kd)
    return {
        "wrong session": dataclasses.replace(kd, session_id=other),
        "wrong round": dataclasses.replace(kd, round_index=kd.round_index + 1),
        "wrong recipient": dataclasses.replace(kd, recipient=ME + 1),
        "recipient server": dataclasses.replace(kd, recipient=SERVER),
        "sender is a party": dataclasses.replace(kd, sender=2),
        "garbage": os.urandom(200),
        "empty": b"",
        "truncated": good[:-1],
        "trailing byte": good + b"\x00",
        "bad magic": b"XAGG" + good[4:],
        "bad version": good[:4] + b"\x01" + good[5:],
        "unknown type": good[:5] + b"\x63" + good[6:],
    }


@pytest.mark.parametrize("active", [False, True])
def test_client_rejects_foreign_misaddressed_and_garbage(active: bool) -> None:
    w = world(active)
    for name, variant in _client_variants(w).items():
        engine = copy.deepcopy(w.client[ClientState.AWAIT_KEYS])
        data = variant if isinstance(variant, bytes) else wire.encode(variant)
        with pytest.raises(RemoteProtocolError):
            engine.receive(data)
        assert engine.state is ClientState.FAILED, name
        assert_dead_client(engine, w)
    # Not a message at all: the local caller's mistake.
    engine = copy.deepcopy(w.client[ClientState.AWAIT_KEYS])
    with pytest.raises(LocalProtocolError):
        engine.receive("not bytes")  # type: ignore[arg-type]
    assert engine.state is ClientState.FAILED


@pytest.mark.parametrize("active", [False, True])
def test_client_rejects_replayed_messages(active: bool) -> None:
    w = world(active)
    order = [MessageType.KEY_DIRECTORY, MessageType.SHARE_DELIVERY]
    if active:
        order.append(MessageType.SURVIVOR_LIST)
    for i, mtype in enumerate(order):
        engine = copy.deepcopy(w.client[ClientState.AWAIT_KEYS])
        for prior in order[:i]:
            engine.receive(wire.encode(w.to_client[prior]))
        if mtype is MessageType.SURVIVOR_LIST:
            engine.set_input(w.inputs[ME])
        data = wire.encode(w.to_client[mtype])
        engine.receive(data)
        with pytest.raises(RemoteProtocolError):
            engine.receive(data)  # second copy
        assert_dead_client(engine, w)
    # After DONE, a replayed unmask request gets no second answer (documented: LocalProtocolError).
    engine = copy.deepcopy(w.client[ClientState.DONE])
    with pytest.raises(LocalProtocolError):
        engine.receive(wire.encode(w.to_client[MessageType.UNMASK_REQUEST]))


@pytest.mark.parametrize("active", [False, True])
def test_abort_from_another_session_is_not_obeyed_as_abort(active: bool) -> None:
    w = world(active)
    engine = copy.deepcopy(w.client[ClientState.AWAIT_SHARES])
    abort = dataclasses.replace(w.to_client[MessageType.ABORT], session_id=os.urandom(16))
    with pytest.raises(RemoteProtocolError) as info:
        engine.receive(wire.encode(abort))
    assert not isinstance(info.value, AbortedError)
    assert_dead_client(engine, w)


def _server_variants(w: World, state: ServerState) -> dict[str, bytes]:
    msg = w.legal_for_server[state]
    good = wire.encode(msg)
    return {
        "wrong session": wire.encode(dataclasses.replace(msg, session_id=os.urandom(16))),
        "wrong round": wire.encode(dataclasses.replace(msg, round_index=msg.round_index + 5)),
        "to a party": wire.encode(_rehead(msg, msg.sender, 2)),
        "from the server": wire.encode(_rehead(msg, SERVER, SERVER)),
        "from an unknown party": wire.encode(_rehead(msg, N + 3, SERVER)),
        "garbage": os.urandom(300),
        "truncated": good[: len(good) // 2],
        "trailing byte": good + b"\x01",
    }


@pytest.mark.parametrize("active", [False, True])
def test_server_rejects_foreign_misaddressed_garbage_and_replay(active: bool) -> None:
    w = world(active)
    for state in SERVER_STATES[active]:
        if state in TERMINAL_SERVER:
            continue
        for name, data in _server_variants(w, state).items():
            server = copy.deepcopy(w.server[state])
            with pytest.raises(RemoteProtocolError):
                server.receive(data)
            assert server.state is ServerState.FAILED, (state, name)
        # Replay: the same party's message twice in its phase.
        server = copy.deepcopy(w.server[state])
        data = wire.encode(w.legal_for_server[state])
        server.receive(data)
        with pytest.raises(RemoteProtocolError):
            server.receive(data)
        assert_dead_server(server, w)


@pytest.mark.parametrize("active", [False, True])
def test_server_replay_of_previous_phase_message(active: bool) -> None:
    w = world(active)
    server = copy.deepcopy(w.server[ServerState.COLLECT_MASKED_INPUTS])
    with pytest.raises(RemoteProtocolError):
        server.receive(wire.encode(w.legal_for_server[ServerState.COLLECT_SHARES]))
    assert_dead_server(server, w)


def test_server_rejects_key_spoofing_in_active_mode() -> None:
    """Party PEER's signed keys presented as party 2's: the signature binds the party id."""
    w = world(True)
    adv = w.legal_for_server[ServerState.COLLECT_KEYS]
    assert isinstance(adv, wire.AdvertiseKeys)
    spoof = wire.AdvertiseKeys(
        adv.session_id,
        adv.round_index,
        2,
        SERVER,
        keys=dataclasses.replace(adv.keys, party=2),
    )
    server = copy.deepcopy(w.server[ServerState.COLLECT_KEYS])
    with pytest.raises(RemoteProtocolError):
        server.receive(wire.encode(spoof))
    assert_dead_server(server, w)


# -- inputs -----------------------------------------------------------------------------------


BAD_INPUTS = {
    "too short": np.zeros(DIM - 1, dtype=np.uint64),
    "too long": np.zeros(DIM + 1, dtype=np.uint64),
    "2-D": np.zeros((1, DIM), dtype=np.uint64),
    "scalar": np.uint64(3),
    "value 2^B": np.full(DIM, 1 << BITS, dtype=np.uint64),
    "value 2^64-1": np.full(DIM, 2**64 - 1, dtype=np.uint64),
    "negative": np.full(DIM, -1, dtype=np.int64),
    "float": np.zeros(DIM, dtype=np.float64),
    "bool": np.zeros(DIM, dtype=bool),
    "python big int": [2**70] * DIM,
    "strings": ["1"] * DIM,
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@pytest.mark.parametrize(
    "state", [ClientState.START, ClientState.AWAIT_SHARES, ClientState.AWAIT_INPUT]
)
def test_set_input_rejects_bad_vectors(name: str, state: ClientState) -> None:
    w = world(False)
    engine = copy.deepcopy(w.client[state])
    with pytest.raises(LocalProtocolError):
        engine.set_input(BAD_INPUTS[name])
    assert_dead_client(engine, w)


def test_set_input_edges_are_accepted_and_twice_or_late_refused() -> None:
    w = world(False)
    engine = copy.deepcopy(w.client[ClientState.AWAIT_INPUT])
    top = np.full(DIM, (1 << BITS) - 1, dtype=np.uint64)
    out = engine.set_input(top)
    assert [type(m) for m in out] == [wire.MaskedInput]
    with pytest.raises(LocalProtocolError):  # too late (and already given)
        engine.set_input(top)
    assert engine.state is ClientState.FAILED
    engine = copy.deepcopy(w.client[ClientState.AWAIT_KEYS])
    engine.set_input([0] * DIM)
    with pytest.raises(LocalProtocolError):
        engine.set_input([0] * DIM)
    assert_dead_client(engine, w)


def test_client_constructor_checks() -> None:
    w = world(True)
    with pytest.raises(LocalProtocolError):
        ClientEngine(w.config, N)
    with pytest.raises(LocalProtocolError):
        ClientEngine(w.config, 0)  # active mode without a signing key


# -- server abort notices ---------------------------------------------------------------------


def _abort_case(active: bool, drops: dict[int, str], state: ServerState, t: int = 3):
    config, signing = make_config(5, t=t, dim=DIM, bits=BITS, active=active)
    inputs = random_inputs(5, DIM, BITS, seed=3)
    r = Router(config, signing, inputs, drops)
    r.run_until(state)
    while r.pending:  # deliver this phase's messages; the dropped parties stay silent
        r.step()
        if r.server.state is not state:
            break
    assert r.server.state is state, r.error
    cohort = r.server._cohort()
    with pytest.raises(AbortedError) as info:
        r.server.close_phase()
    return r, info.value, cohort


@pytest.mark.parametrize(
    ("active", "drops", "state"),
    [
        (False, {0: "advertise", 1: "advertise", 2: "advertise"}, ServerState.COLLECT_KEYS),
        (False, {0: "share_keys", 1: "share_keys"}, ServerState.COLLECT_SHARES),
        (
            False,
            {0: "masked_input", 1: "masked_input", 2: "masked_input"},
            ServerState.COLLECT_MASKED_INPUTS,
        ),
        (
            True,
            {0: "consistency", 1: "consistency", 2: "consistency"},
            ServerState.COLLECT_SIGNATURES,
        ),
        (False, {0: "unmask", 1: "unmask", 2: "unmask"}, ServerState.COLLECT_UNMASK),
        (True, {0: "unmask", 1: "unmask", 2: "unmask"}, ServerState.COLLECT_UNMASK),
    ],
    ids=["keys", "shares", "masked", "signatures", "unmask-semi", "unmask-active"],
)
def test_close_phase_below_threshold_aborts_with_notices(
    active: bool, drops: dict[int, str], state: ServerState
) -> None:
    r, err, cohort = _abort_case(active, drops, state)
    server = r.server
    assert server.state is ServerState.FAILED and server.result is None
    assert server.error is err
    notices = err.notices  # type: ignore[attr-defined]
    assert notices and all(isinstance(m, wire.Abort) for m in notices)
    assert sorted(m.recipient for m in notices) == sorted(cohort)
    for m in notices:
        assert m.sender == SERVER and m.session_id == r.config.session_id
        wire.decode(wire.encode(m))
    # Every party still in the round obeys the notice: AbortedError, FAILED, secrets wiped.
    for m in notices:
        client = r.clients[m.recipient]
        if client.state in TERMINAL_CLIENT:
            continue
        with pytest.raises(AbortedError):
            client.receive(wire.encode(m))
        assert client.state is ClientState.FAILED
        assert_wiped(client)
    with pytest.raises(LocalProtocolError):
        server.close_phase()


def test_phase_closes_by_itself_and_close_phase_is_a_noop_path() -> None:
    """With everyone answering, no close_phase is needed until DONE; then it is refused."""
    config, signing = make_config(4, t=2, dim=DIM, bits=BITS)
    inputs = random_inputs(4, DIM, BITS, seed=1)
    r = Router(config, signing, inputs)
    r.start()
    while r.pending:
        r.step()
    assert r.server.state is ServerState.DONE
    with pytest.raises(LocalProtocolError):
        r.server.close_phase()


# -- persistence ------------------------------------------------------------------------------


def _checkpoints(active: bool) -> list[ClientState]:
    out = [
        ClientState.AWAIT_KEYS,
        ClientState.AWAIT_SHARES,
        ClientState.AWAIT_INPUT,
        ClientState.AWAIT_SURVIVORS,
    ]
    if active:
        out.append(ClientState.AWAIT_UNMASK)
    return out


@pytest.mark.parametrize(
    ("active", "checkpoint", "early"),
    [
        (a, c, e)
        for a in (False, True)
        for c in _checkpoints(a)
        for e in (True, False)
        if not (c is ClientState.AWAIT_INPUT and e)
    ],
    ids=lambda v: v.name if isinstance(v, ClientState) else str(v),
)
def test_state_dict_resume_finishes_round(
    active: bool, checkpoint: ClientState, early: bool
) -> None:
    """Persist party 0 at a phase boundary, restore into a fresh engine, finish the round."""
    n = 5
    config, signing = make_config(n, t=3, dim=DIM, bits=BITS, active=active, kind="complete")
    inputs = random_inputs(n, DIM, BITS, seed=11)
    # Party 0 sets its input by hand when it is late, so that AWAIT_INPUT can be observed.
    router_inputs = inputs if early else {u: x for u, x in inputs.items() if u != ME}
    r = Router(config, signing, router_inputs, input_early=early)
    r.start()
    while r.clients[ME].state is not checkpoint:
        assert r.step(), r.error
        if (
            r.clients[ME].state is ClientState.AWAIT_INPUT
            and checkpoint is not ClientState.AWAIT_INPUT
        ):
            r.to_server(ME, r.clients[ME].set_input(inputs[ME]))
    saved = pickle.loads(pickle.dumps(r.clients[ME].state_dict()))
    assert saved["party"] == ME and saved["session_id"] == config.session_id
    fresh = ClientEngine(config, ME, signing_key=None if signing is None else signing[ME])
    fresh.load_state_dict(saved)
    assert fresh.state is checkpoint
    r.clients[ME] = fresh
    r.inputs = inputs  # the router now hands party 0 its input on reaching AWAIT_INPUT
    if checkpoint is ClientState.AWAIT_INPUT:
        r.to_server(ME, fresh.set_input(inputs[ME]))
    out = r.run()
    assert out.result is not None, (out.error, out.client_errors)
    assert out.result.survivors == tuple(range(n))
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, range(n), BITS))
    assert fresh.state is ClientState.DONE


@pytest.mark.parametrize("active", [False, True])
def test_state_dict_from_another_party_session_or_round_is_refused(active: bool) -> None:
    w = world(active)
    state = copy.deepcopy(w.client[ClientState.AWAIT_SURVIVORS]).state_dict()
    key = None if w.signing is None else w.signing[1]
    other_party = ClientEngine(w.config, 1, signing_key=key)
    with pytest.raises(LocalProtocolError):
        other_party.load_state_dict(state)
    assert other_party.state is ClientState.START

    me_key = None if w.signing is None else w.signing[ME]
    for change in (
        {"session_id": os.urandom(16)},
        {"round_index": w.config.round_index + 1},
        {"version": 999},
    ):
        other = ClientEngine(
            dataclasses.replace(w.config, **{k: v for k, v in change.items() if k != "version"}),
            ME,
            signing_key=me_key,
        )
        bad = dict(state, **change) if "version" in change else state
        with pytest.raises(LocalProtocolError):
            other.load_state_dict(bad)
        assert other.state is ClientState.START
        assert other._held is None


@pytest.mark.parametrize("active", [False, True])
def test_state_dict_after_failure_holds_no_secrets(active: bool) -> None:
    w = world(active)
    engine = copy.deepcopy(w.client[ClientState.AWAIT_INPUT])
    with pytest.raises(RemoteProtocolError):
        engine.receive(wire.encode(w.to_client[MessageType.KEY_DIRECTORY]))
    saved = engine.state_dict()
    assert saved["state"] == ClientState.FAILED.value
    assert saved["secrets"] is None and saved["held"] is None
    assert saved["self_mask_seed"] is None and saved["input"] is None
    assert saved.get("receive_keys") is None


@pytest.mark.parametrize("terminal", [ClientState.FAILED, ClientState.DONE])
def test_terminal_engine_refuses_load_state_dict(terminal: ClientState) -> None:
    """Regression: a FAILED or DONE engine used to come back to life from an older dict."""
    w = world(False)
    older = copy.deepcopy(w.client[ClientState.AWAIT_SURVIVORS]).state_dict()
    engine = copy.deepcopy(w.client[terminal])
    with pytest.raises(LocalProtocolError):
        engine.load_state_dict(older)
    assert engine.state is terminal
