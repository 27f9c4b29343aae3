"""Persisted engine state (secagg.engine.persist, ClientEngine/ServerEngine.to_bytes/load_bytes).

The codec: canonical, strict and bounded (hypothesis: round trips; arbitrary or mutated bytes give
a value that re-encodes to exactly those bytes, or a StateError, never another exception).
The envelope: both engines persisted at every state of real rounds (semi-honest and active, with
dropouts) and resumed to the right sum; tampered, truncated, wrong-key, rolled back, replayed,
wrong-role, wrong-party, other-session and downgraded blobs all refused with the engine still
fresh and loadable with the right blob afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import Router, make_config, plain_sum, random_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import messages as wire
from secagg.config import RoundConfig
from secagg.engine import ClientEngine, ServerEngine, persist
from secagg.engine._state import ClientState, ServerState
from secagg.engine.persist import (
    MAX_DEPTH,
    MAX_INT_BYTES,
    RollbackGuard,
    decode_value,
    encode_value,
)
from secagg.errors import LocalProtocolError, SecAggError, StateError
from secagg.layout import BlockLayout

N, T, DIM, BITS = 5, 3, 8, 16
ME = 0
KEY = bytes(range(32))

# -- the codec -----------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (``True == 1`` and ``[1] == (1,)`` must not pass)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            same(k, next(k2 for k2 in b if k2 == k)) and same(a[k], b[k]) for k in a
        )
    return bool(a == b)


_INT_LIMIT = 1 << (8 * MAX_INT_BYTES - 1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-_INT_LIMIT, max_value=_INT_LIMIT - 1)
    | st.binary(max_size=64)
    | st.text(max_size=16)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.integers() | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@given(values)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_codec_round_trip(value: Any) -> None:
    data = encode_value(value)
    back = decode_value(data)
    assert same(back, value)
    assert encode_value(back) == data


@given(st.binary(max_size=256))
@settings(max_examples=2000)
def test_arbitrary_bytes_decode_canonically_or_raise_state_error(data: bytes) -> None:
    try:
        value = decode_value(data)
    except StateError:
        return
    # Canonical: whatever decodes is the one encoding of its value.
    assert encode_value(value) == data


@given(values, st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_encodings_decode_canonically_or_raise_state_error(
    value: Any, data: st.DataObject
) -> None:
    encoded = bytearray(encode_value(value))
    action = data.draw(st.sampled_from(["flip", "truncate", "append", "insert"]))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    if action == "flip":
        encoded[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del encoded[pos:]
    elif action == "append":
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    else:
        encoded[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        back = decode_value(bytes(encoded))
    except StateError:
        return
    assert encode_value(back) == bytes(encoded)


def test_codec_known_encodings() -> None:
    assert encode_value(None) == b"\x00"
    assert encode_value(False) == b"\x01" and encode_value(True) == b"\x02"
    assert encode_value(0) == b"\x03\x00"
    assert encode_value(127) == b"\x03\x01\x7f"
    assert encode_value(128) == b"\x03\x02\x00\x80"
    assert encode_value(-128) == b"\x03\x01\x80"
    assert encode_value(-129) == b"\x03\x02\xff\x7f"
    assert encode_value(b"ab") == b"\x04\x00\x00\x00\x02ab"
    assert encode_value("é") == b"\x05\x00\x00\x00\x02\xc3\xa9"
    assert encode_value([None]) == b"\x06\x00\x00\x00\x01\x00"
    # Keys sorted by their encodings, whatever the insertion order.
    assert encode_value({"b": 1, "a": 2, 3: None}) == encode_value({3: None, "a": 2, "b": 1})
    for big in (2**63 - 1, -(2**63), 2**64, -(2**200), _INT_LIMIT - 1, -_INT_LIMIT):
        assert decode_value(encode_value(big)) == big


def test_codec_normalises_tuples_bytes_like_and_numpy_scalars() -> None:
    value = (np.int64(-5), bytearray(b"x"), memoryview(b"y"), np.uint32(7), np.bool_(True))
    back = decode_value(encode_value(value))
    assert same(back, [-5, b"x", b"y", 7, True])
    assert same(decode_value(encode_value({np.int64(3): (1, 2)})), {3: [1, 2]})


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (1.5, "float"),
        ({1.0: 1}, "not int or str"),
        ({True: 1}, "not int or str"),
        ({(1, 2): 1}, "not int or str"),
        ({1, 2}, "set"),
        (object(), "object"),
        (_INT_LIMIT, "integer of"),
        (-_INT_LIMIT - 1, "integer of"),
        ("\ud800", "UTF-8"),
        ({"held": [1, 2.0]}, "state['held'][1]"),
    ],
)
def test_codec_refuses_unencodable_values(value: Any, words: str) -> None:
    with pytest.raises(StateError, match=words.replace("[", r"\[").replace("]", r"\]")):
        encode_value(value)


def test_codec_bounds_depth_and_size() -> None:
    deep: Any = None
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert same(decode_value(encode_value(deep)), deep)
    with pytest.raises(StateError, match="MAX_DEPTH"):
        encode_value([deep])
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(StateError, match="MAX_DEPTH"):
        encode_value(cyclic)
    # A hand-built encoding one level too deep is refused by the decoder too.
    too_deep = b"\x06\x00\x00\x00\x01" * (MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(StateError, match="MAX_DEPTH"):
        decode_value(too_deep)
    with pytest.raises(StateError, match="max_bytes"):
        encode_value(b"x" * 100, max_bytes=50)
    with pytest.raises(StateError, match="max_bytes"):
        decode_value(encode_value(b"x" * 100), max_bytes=50)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "truncated"),
        (b"\x00\x00", "trailing"),
        (b"\x08", "unknown tag"),
        (b"\x03\x01\x00", "non-canonical integer"),  # 0 is the empty body
        (b"\x03\x02\x00\x01", "non-canonical integer"),  # 1 needs one byte
        (b"\x03\x02\xff\xff", "non-canonical integer"),  # -1 needs one byte
        (b"\x03\x02\x01", "truncated"),
        (b"\x04\x00\x00\x00\x05abc", "truncated"),
        (b"\x05\x00\x00\x00\x01\xff", "UTF-8"),
        (b"\x06\xff\xff\xff\xff", "truncated"),  # a forged count cannot make us allocate
        (b"\x07\x00\x00\x00\x01\x00\x00\x00", "not an int or a string"),
        (b"\x07\x00\x00\x00\x01\x02\x00\x00", "not an int or a string"),  # bool key
        (b"\x07\x00\x00\x00\x02\x03\x01\x02\x00\x03\x01\x01\x00", "not strictly sorted"),
        (b"\x07\x00\x00\x00\x02\x03\x01\x01\x00\x03\x01\x01\x00", "not strictly sorted"),
    ],
)
def test_codec_refuses_non_canonical_or_malformed(data: bytes, words: str) -> None:
    with pytest.raises(StateError, match=words):
        decode_value(data)


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(StateError, match="bytes"):
        decode_value("abc")  # type: ignore[arg-type]


# -- rounds with persisted engines ---------------------------------------------------------------


def _config(active: bool, **kw: Any) -> tuple[RoundConfig, list[bytes] | None]:
    return make_config(N, t=T, dim=DIM, bits=BITS, active=active, kind="complete", **kw)


def fresh_client(config: RoundConfig, signing: list[bytes] | None, party: int) -> ClientEngine:
    return ClientEngine(config, party, signing_key=None if signing is None else signing[party])


def reload_client(
    engine: ClientEngine, signing: list[bytes] | None, blob: bytes, **kw: Any
) -> ClientEngine:
    out = fresh_client(engine.config, signing, engine.party)
    out.load_bytes(blob, **kw)
    return out


def reload_server(engine: ServerEngine, blob: bytes, **kw: Any) -> ServerEngine:
    out = ServerEngine(engine.config)
    out.load_bytes(blob, **kw)
    return out


def _same_engine_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal state dicts. The error survives a reload only as a message (the engines restore it
    as a LocalProtocolError wrapping the old repr), so only its presence is compared."""
    assert (a["error"] is None) == (b["error"] is None)
    assert encode_value({**a, "error": None}) == encode_value({**b, "error": None})


def _stateless_round(
    r: Router, signing: list[bytes] | None, sealed: bool
) -> tuple[set[ClientState], set[ServerState], dict[int, RollbackGuard]]:
    """Run ``r`` as a stateless host would: after every batch of messages, every engine (all
    parties and the server) is written to bytes and replaced by a fresh engine loaded from
    them, sealed under a RollbackGuard per engine (key -1: the server). Returns the states
    crossed and the guards."""
    n = r.config.num_parties
    guards = {u: RollbackGuard() for u in [*range(n), -1]}
    seen_client: set[ClientState] = set()
    seen_server: set[ServerState] = set()

    def persist_all() -> None:
        for u in range(n):
            client = r.clients[u]
            seen_client.add(client.state)
            kw: dict[str, Any] = {}
            if sealed:
                blob = client.to_bytes(key=KEY, counter=guards[u].next_counter())
                kw = {"key": KEY, "min_counter": guards[u]}
            else:
                blob = client.to_bytes()
            restored = reload_client(client, signing, blob, **kw)
            _same_engine_state(restored.state_dict(), client.state_dict())
            r.clients[u] = restored
        seen_server.add(r.server.state)
        if sealed:
            blob = r.server.to_bytes(key=KEY, counter=guards[-1].next_counter())
            restored_server = reload_server(r.server, blob, key=KEY, min_counter=guards[-1])
        else:
            restored_server = reload_server(r.server, r.server.to_bytes())
        _same_engine_state(restored_server.state_dict(), r.server.state_dict())
        r.server = restored_server

    persist_all()
    r.start()
    while True:
        persist_all()
        if not r.step():
            break
    persist_all()
    return seen_client, seen_server, guards


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_every_engine_persisted_after_every_step_finishes_the_round(
    active: bool, sealed: bool
) -> None:
    """A stateless host (see _stateless_round). Two parties drop (one waiting for its input,
    one during unmasking); the round still ends with the survivors' exact sum, and every state
    of both engines was crossed."""
    n = 6
    config, signing = make_config(n, t=T, dim=DIM, bits=BITS, active=active)
    inputs = random_inputs(n, DIM, BITS, seed=3)
    # Party 5 never gets its input (it waits in AWAIT_INPUT: a drop before its masked input).
    late = {u: x for u, x in inputs.items() if u != 5}
    r = Router(config, signing, late, drops={4: "unmask"}, input_early=False)
    seen_client, seen_server, guards = _stateless_round(r, signing, sealed)
    out = r.outcome()
    assert out.result is not None, (out.error, out.client_errors)
    assert out.result.survivors == (0, 1, 2, 3, 4)
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, range(5), BITS))
    expected_client = {s for s in ClientState if s is not ClientState.FAILED}
    if not active:
        expected_client.discard(ClientState.AWAIT_UNMASK)
    assert expected_client <= seen_client
    expected_server = {s for s in ServerState if s is not ServerState.FAILED}
    if not active:
        expected_server.discard(ServerState.COLLECT_SIGNATURES)
    assert seen_server == expected_server
    if sealed:
        assert all(g.last_opened == g.last_sealed > 0 for g in guards.values())


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_stateless_host_on_a_sparse_part_wise_round(active: bool) -> None:
    """The same stateless, sealed host on a Harary graph (n = 10, k = 4) with a part-wise
    layout (block 0 held by party 0 and its neighbours, block 1 by everyone): per-block sums
    exact."""
    n, k, t = 10, 4, 3
    base, signing = make_config(n, t=t, dim=8, bits=BITS, active=active, kind="harary", k=k)
    # Block 0: party 0 and its graph neighbours (connected through 0); block 1: everyone.
    block0 = {0, *base.neighbors(0)}
    holdings = tuple((0, 1) if u in block0 else (1,) for u in range(n))
    layout = BlockLayout((4, 4), holdings, min_holders=3)
    config = dataclasses.replace(base, layout=layout)
    gen = np.random.default_rng(5)
    inputs = {
        u: gen.integers(0, 1 << BITS, size=config.input_length(u), dtype=np.uint64)
        for u in range(n)
    }
    r = Router(config, signing, inputs)
    _stateless_round(r, signing, sealed=True)
    out = r.outcome()
    assert out.result is not None, (out.error, out.client_errors)
    expected = np.zeros(layout.dim, dtype=np.uint64)
    for u in range(n):
        expected[layout.positions(layout.holdings[u])] += inputs[u]
    expected &= np.uint64((1 << BITS) - 1)
    np.testing.assert_array_equal(out.result.total.astype(np.uint64), expected)


def _drive(r: Router, until: Callable[[Router], bool]) -> None:
    """Step the round (starting it if needed) until ``until`` holds."""
    while not until(r) and r.step():
        pass
    assert until(r), r.error


CLIENT_CHECKPOINTS = {
    False: [s for s in ClientState if s not in (ClientState.AWAIT_UNMASK, ClientState.FAILED)],
    True: [s for s in ClientState if s is not ClientState.FAILED],
}
SERVER_CHECKPOINTS = {
    False: [
        s for s in ServerState if s not in (ServerState.COLLECT_SIGNATURES, ServerState.FAILED)
    ],
    True: [s for s in ServerState if s is not ServerState.FAILED],
}


@pytest.mark.parametrize(
    ("active", "checkpoint"),
    [(a, c) for a in (False, True) for c in CLIENT_CHECKPOINTS[a]],
    ids=lambda v: v.name if isinstance(v, ClientState) else ("active" if v else "semi-honest"),
)
def test_client_resumed_from_sealed_bytes_at_each_state(
    active: bool, checkpoint: ClientState
) -> None:
    """Party 0 is sealed at ``checkpoint``, the original is discarded, and a fresh engine loaded
    from the blob takes its place; the round ends with the right sum."""
    config, signing = _config(active)
    inputs = random_inputs(N, DIM, BITS, seed=21)
    late = checkpoint is ClientState.AWAIT_INPUT
    r = Router(config, signing, inputs if not late else {u: x for u, x in inputs.items() if u})
    r.input_early = not late
    _drive(r, lambda r: r.clients[ME].state is checkpoint)
    blob = r.clients[ME].to_bytes(key=KEY, counter=7)
    restored = reload_client(r.clients[ME], signing, blob, key=KEY, min_counter=7)
    assert restored.state is checkpoint
    r.clients[ME] = restored
    if late:
        r.to_server(ME, restored.set_input(inputs[ME]))
    out = r.run()
    assert out.result is not None, (out.error, out.client_errors)
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, range(N), BITS))
    assert restored.state is ClientState.DONE


@pytest.mark.parametrize(
    ("active", "checkpoint"),
    [(a, c) for a in (False, True) for c in SERVER_CHECKPOINTS[a]],
    ids=lambda v: v.name if isinstance(v, ServerState) else ("active" if v else "semi-honest"),
)
def test_server_resumed_from_sealed_bytes_at_each_state(
    active: bool, checkpoint: ServerState
) -> None:
    """The server is sealed at ``checkpoint`` (mid-phase: half of the phase's messages already
    accepted), reloaded into a fresh engine, and finishes with the survivors' sum, one party
    having dropped before its masked input."""
    config, signing = _config(active)
    inputs = random_inputs(N, DIM, BITS, seed=22)
    r = Router(config, signing, inputs, drops={2: "masked_input"})
    if checkpoint is ServerState.COLLECT_KEYS:
        sent = [r.clients[u].start() for u in range(N)]
        for u in range(N):
            r.clients[u].set_input(inputs[u])
        for u in range(2):
            r.to_server(u, sent[u])
        r.started = True
        blob = r.server.to_bytes(key=KEY, counter=1)
        r.server = reload_server(r.server, blob, key=KEY, min_counter=1)
        for u in range(2, N):
            r.to_server(u, sent[u])
    else:
        _drive(r, lambda r: r.server.state is checkpoint)
        if r.pending:  # deliver half the phase's messages, then persist mid-phase
            half = len(r.pending) // 2
            batch, r.pending = r.pending[:half], r.pending[half:]
            for m in batch:
                r.to_server(m.recipient, r.deliver_one(m))
        assert r.server.state is checkpoint
        blob = r.server.to_bytes(key=KEY, counter=1)
        r.server = reload_server(r.server, blob, key=KEY, min_counter=1)
    out = r.run()
    assert out.result is not None, (out.error, out.client_errors)
    survivors = tuple(u for u in range(N) if u != 2)
    assert out.result.survivors == survivors
    np.testing.assert_array_equal(out.result.total, plain_sum(inputs, survivors, BITS))


def test_failed_engines_persist_as_failed() -> None:
    config, signing = _config(False)
    client = fresh_client(config, signing, ME)
    client.start()
    with pytest.raises(SecAggError):
        client.receive(b"garbage")
    back = reload_client(client, signing, client.to_bytes(key=KEY, counter=1), key=KEY)
    assert back.state is ClientState.FAILED and back.error is not None
    with pytest.raises(LocalProtocolError):
        back.receive(b"garbage")
    server = ServerEngine(config)
    with pytest.raises(SecAggError):
        server.receive(b"garbage")
    back_server = reload_server(server, server.to_bytes())
    assert back_server.state is ServerState.FAILED


# -- refusals ------------------------------------------------------------------------------------


class Scene:
    """Party 0 and the server of an active round, sealed mid-round with counter 5."""

    def __init__(self) -> None:
        config, signing = _config(True)
        r = Router(config, signing, random_inputs(N, DIM, BITS, seed=9))
        _drive(r, lambda r: r.clients[ME].state is ClientState.AWAIT_SURVIVORS)
        self.config, self.signing, self.router = config, signing, r
        self.client_blob = r.clients[ME].to_bytes(key=KEY, counter=5)
        self.server_blob = r.server.to_bytes(key=KEY, counter=5)
        self.client_state = r.clients[ME].state_dict()
        self.server_state = r.server.state_dict()

    def client(self, party: int = ME, config: RoundConfig | None = None) -> ClientEngine:
        return fresh_client(config or self.config, self.signing, party)

    def server(self, config: RoundConfig | None = None) -> ServerEngine:
        return ServerEngine(config or self.config)


@functools.lru_cache(maxsize=1)
def shared_scene() -> Scene:
    return Scene()


@pytest.fixture()
def scene() -> Scene:
    return shared_scene()


def assert_fresh_and_loadable(engine: ClientEngine | ServerEngine, scene: Scene) -> None:
    """Refused loads leave the engine exactly fresh; the right blob then loads."""
    if isinstance(engine, ClientEngine):
        assert engine.state is ClientState.START
        fresh = scene.client(engine.party, engine.config)
        _same_engine_state(engine.state_dict(), fresh.state_dict())
        if engine.party == ME and engine.config is scene.config:
            engine.load_bytes(scene.client_blob, key=KEY, min_counter=5)
            _same_engine_state(engine.state_dict(), scene.client_state)
    else:
        assert engine.state is ServerState.COLLECT_KEYS
        _same_engine_state(engine.state_dict(), scene.server(engine.config).state_dict())
        if engine.config is scene.config:
            engine.load_bytes(scene.server_blob, key=KEY, min_counter=5)
            _same_engine_state(engine.state_dict(), scene.server_state)


def refused(engine: ClientEngine | ServerEngine, blob: bytes, words: str, **kw: Any) -> None:
    with pytest.raises(StateError, match=words):
        engine.load_bytes(blob, **kw)


def test_the_sealed_state_hides_the_secrets(scene: Scene) -> None:
    """What the plaintext blob exposes (and the sealed one does not): at AWAIT_SHARES the
    private keys, the self-mask seed, the share-opening keys and the raw input; at
    AWAIT_SURVIVORS the neighbours' shares."""
    config, signing = _config(True)
    inputs = random_inputs(N, DIM, BITS, seed=8)
    r = Router(config, signing, inputs)
    _drive(r, lambda r: r.clients[ME].state is ClientState.AWAIT_SHARES)
    early = r.clients[ME].state_dict()
    held = scene.client_state["held"]
    found = [
        *early["secrets"],
        early["self_mask_seed"],
        *early["receive_keys"].values(),
        early["input"],
        *held[1].values(),
        *held[2].values(),
    ]
    plain = r.clients[ME].to_bytes() + scene.router.clients[ME].to_bytes()
    sealed = r.clients[ME].to_bytes(key=KEY, counter=1) + scene.client_blob
    for secret in found:
        assert len(secret) >= 16
        assert secret in plain  # the plaintext blob holds them in the clear ...
        assert secret not in sealed  # ... the sealed one does not
    again = scene.router.clients[ME].to_bytes(key=KEY, counter=5)
    assert again != scene.client_blob  # a fresh nonce per seal
    scene.client().load_bytes(again, key=KEY, min_counter=5)


@pytest.mark.parametrize("which", ["client", "server"])
def test_every_single_byte_change_is_refused(scene: Scene, which: str) -> None:
    blob = scene.client_blob if which == "client" else scene.server_blob
    engine = scene.client() if which == "client" else scene.server()
    # Every header byte, every nonce byte, and a spread of ciphertext and tag bytes.
    positions = sorted({*range(80), *range(len(blob) - 40, len(blob)), *range(80, len(blob), 97)})
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(StateError):
            engine.load_bytes(bytes(bad), key=KEY, min_counter=0)
    assert_fresh_and_loadable(engine, scene)


def test_truncated_or_extended_blobs_are_refused(scene: Scene) -> None:
    engine = scene.client()
    blob = scene.client_blob
    for cut in (*range(0, 100), *range(len(blob) - 40, len(blob))):
        with pytest.raises(StateError):
            engine.load_bytes(blob[:cut], key=KEY)
    refused(engine, blob + b"\x00", "authentication", key=KEY)
    refused(engine, b"", "magic", key=KEY)
    assert_fresh_and_loadable(engine, scene)


def test_wrong_key_is_refused(scene: Scene) -> None:
    engine = scene.client()
    refused(engine, scene.client_blob, "authentication", key=os.urandom(32))
    refused(engine, scene.client_blob, "key must be 32 bytes", key=KEY[:16])
    refused(engine, scene.client_blob, "sealed: load it with its key")
    assert_fresh_and_loadable(engine, scene)


def test_plaintext_blob_refused_when_a_key_is_expected(scene: Scene) -> None:
    """No downgrade: a host that seals never accepts an unsealed (forgeable) state."""
    engine = scene.client()
    plain = scene.router.clients[ME].to_bytes()
    refused(engine, plain, "not sealed", key=KEY)
    refused(engine, plain, "no counter", min_counter=1)
    assert_fresh_and_loadable(engine, scene)


def test_rolled_back_or_replayed_state_is_refused(scene: Scene) -> None:
    engine = scene.client()
    refused(engine, scene.client_blob, "rolled back", key=KEY, min_counter=6)
    guard = RollbackGuard(last_opened=5)
    refused(engine, scene.client_blob, "rolled back", key=KEY, min_counter=guard)
    assert guard.last_opened == 5
    assert_fresh_and_loadable(engine, scene)
    # A guard accepts each blob once: the second restore of the same state is a replay.
    guard = RollbackGuard()
    scene.client().load_bytes(scene.client_blob, key=KEY, min_counter=guard)
    assert guard.last_opened == 5 and guard.min_counter == 6
    refused(scene.client(), scene.client_blob, "replayed", key=KEY, min_counter=guard)
    # The counter is authenticated: rewriting it to look fresh breaks the tag.
    header = persist.client_identity(scene.config, ME).header(5)
    bumped = persist.client_identity(scene.config, ME).header(99) + scene.client_blob[len(header) :]
    refused(scene.client(), bumped, "authentication", key=KEY, min_counter=guard)
    assert guard.last_opened == 5


def test_failed_load_does_not_advance_the_guard(scene: Scene) -> None:
    guard = RollbackGuard()
    engine = scene.client()
    engine.start()  # not fresh any more
    with pytest.raises(LocalProtocolError, match="fresh"):
        engine.load_bytes(scene.client_blob, key=KEY, min_counter=guard)
    assert guard.last_opened == -1
    scene.client().load_bytes(scene.client_blob, key=KEY, min_counter=guard)


def test_wrong_role_party_session_or_round_is_refused(scene: Scene) -> None:
    server = scene.server()
    refused(server, scene.client_blob, "CLIENT engine, not a SERVER", key=KEY)
    refused(server, scene.router.clients[ME].to_bytes(), "CLIENT engine, not a SERVER")
    assert_fresh_and_loadable(server, scene)
    client = scene.client()
    refused(client, scene.server_blob, "SERVER engine, not a CLIENT", key=KEY)
    assert_fresh_and_loadable(client, scene)

    other_party = scene.client(1)
    refused(other_party, scene.client_blob, "party", key=KEY)
    refused(other_party, scene.router.clients[ME].to_bytes(), "party")
    assert_fresh_and_loadable(other_party, scene)

    for change in ({"session_id": os.urandom(16)}, {"round_index": 1}):
        cfg = dataclasses.replace(scene.config, **change)
        for engine in (scene.client(ME, cfg), scene.server(cfg)):
            words = "session" if "session_id" in change else "round"
            blob = scene.client_blob if isinstance(engine, ClientEngine) else scene.server_blob
            refused(engine, blob, words, key=KEY)
            assert_fresh_and_loadable(engine, scene)


def test_header_rewritten_to_another_party_fails_authentication(scene: Scene) -> None:
    """A storage attacker relabels party 0's blob as party 1's: the header now matches party 1,
    but the key derivation and the associated data bind party 0."""
    ident = persist.client_identity(scene.config, ME)
    other = persist.client_identity(scene.config, 1)
    blob = other.header(5) + scene.client_blob[len(ident.header(5)) :]
    engine = scene.client(1)
    refused(engine, blob, "authentication", key=KEY)
    assert_fresh_and_loadable(engine, scene)


def test_state_saved_under_another_configuration_is_refused(scene: Scene) -> None:
    """Same session id and round, weaker settings (a lower threshold, semi-honest mode): a state
    saved under the round's real configuration never resumes under a downgraded one."""
    semi_honest = {"active": False, "verify_keys": None}
    for change in ({**semi_honest, "threshold": 2}, semi_honest):
        cfg = dataclasses.replace(scene.config, **change)
        assert cfg.session_id == scene.config.session_id and cfg.digest != scene.config.digest
        client = scene.client(ME, cfg)
        refused(client, scene.client_blob, "another round configuration", key=KEY)
        refused(client, scene.router.clients[ME].to_bytes(), "another round configuration")
        assert_fresh_and_loadable(client, scene)
        server = scene.server(cfg)
        refused(server, scene.server_blob, "another round configuration", key=KEY)
        assert_fresh_and_loadable(server, scene)


def test_half_loadable_plaintext_leaves_the_engine_fresh(scene: Scene) -> None:
    """load_state_dict assigns field by field; a forged plaintext state that breaks half-way
    must not leave a half-restored engine."""
    state = copy.deepcopy(scene.client_state)
    state["held"] = [b"only one field"]
    prefix = persist.client_identity(scene.config, ME).prefix(0)
    engine = scene.client()
    refused(engine, prefix + encode_value(state), "cannot be loaded")
    assert_fresh_and_loadable(engine, scene)
    server_state = copy.deepcopy(scene.server_state)
    server_state["peers"] = "not a dict"
    server = scene.server()
    refused(
        server,
        persist.server_identity(scene.config).prefix(0) + encode_value(server_state),
        "cannot be loaded",
    )
    assert_fresh_and_loadable(server, scene)


def test_bad_arguments_to_to_bytes(scene: Scene) -> None:
    client = scene.router.clients[ME]
    with pytest.raises(StateError, match="needs a key"):
        client.to_bytes(counter=3)
    with pytest.raises(StateError, match="counter"):
        client.to_bytes(key=KEY, counter=-1)
    with pytest.raises(StateError, match="counter"):
        client.to_bytes(key=KEY, counter=2**64)
    with pytest.raises(StateError, match="key must be 32 bytes"):
        client.to_bytes(key=b"short", counter=1)
    with pytest.raises(StateError, match="min_counter"):
        scene.client().load_bytes(scene.client_blob, key=KEY, min_counter=-1)
    assert client.to_bytes(key=KEY, counter=2**64 - 1)


@given(st.binary(max_size=200), st.booleans())
@settings(max_examples=300, deadline=None)
def test_arbitrary_blobs_are_refused_with_typed_errors(data: bytes, with_prefix: bool) -> None:
    scene = shared_scene()
    engine = scene.client()
    if with_prefix:  # get past the magic so that the codec and the loader are exercised
        data = persist.client_identity(scene.config, ME).prefix(0) + data
    try:
        engine.load_bytes(data)
    except SecAggError:
        assert engine.state is ClientState.START
        _same_engine_state(engine.state_dict(), scene.client().state_dict())
        return
    raise AssertionError("an arbitrary blob was accepted")  # pragma: no cover


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_forged_fields_in_plaintext_states_never_half_load(data: st.DataObject) -> None:
    """A plaintext state with one field replaced by an arbitrary value: loading either succeeds
    (plaintext is trusted, the engine does not validate every field) or raises a SecAggError
    and leaves the engine exactly fresh. Never another exception, never a half-loaded engine."""
    scene = shared_scene()
    server_side = data.draw(st.booleans())
    state = copy.deepcopy(scene.server_state if server_side else scene.client_state)
    field = data.draw(st.sampled_from(sorted(state)))
    state[field] = data.draw(values)
    engine: ClientEngine | ServerEngine = scene.server() if server_side else scene.client()
    identity = (
        persist.server_identity(scene.config)
        if server_side
        else persist.client_identity(scene.config, ME)
    )
    try:
        engine.load_bytes(identity.prefix(0) + encode_value(state))
    except SecAggError:
        fresh = scene.server() if server_side else scene.client()
        _same_engine_state(engine.state_dict(), fresh.state_dict())


def test_sealed_rollback_stops_the_double_unmask_attack() -> None:
    """The hazard of tests/test_lying_server.py::test_state_dict_rollback_hazard, with sealed
    state and a RollbackGuard: the party's pre-unmask state, already opened once to answer the
    first request, cannot be opened again to answer a contradicting one."""
    config, signing = make_config(6, t=3, dim=DIM, bits=BITS)
    r = Router(config, signing, random_inputs(6, DIM, BITS, seed=4))
    r.run_until(ServerState.COLLECT_UNMASK)
    guard = RollbackGuard()
    stored = r.clients[0].to_bytes(key=KEY, counter=guard.next_counter())
    host = ClientEngine(config, 0)
    host.load_bytes(stored, key=KEY, min_counter=guard)
    (first,) = host.receive(wire.encode(r.pending_for(0)))
    assert first.TYPE is wire.MessageType.UNMASK_RESPONSE
    replayed = ClientEngine(config, 0)
    with pytest.raises(StateError, match="replayed"):
        replayed.load_bytes(stored, key=KEY, min_counter=guard)
    assert replayed.state is ClientState.START  # nothing to answer a second request with


def test_guard_counters_are_monotonic() -> None:
    guard = RollbackGuard()
    assert [guard.next_counter() for _ in range(3)] == [0, 1, 2]
    guard.record(1)
    with pytest.raises(StateError):
        guard.record(1)
    assert guard.next_counter() == 3
    guard.record(3)
    assert guard.next_counter() == 4
    with pytest.raises(StateError):
        RollbackGuard(last_opened=-2)
    restored = RollbackGuard(last_sealed=guard.last_sealed, last_opened=guard.last_opened)
    assert restored.min_counter == 4 and restored.next_counter() == 5


def test_header_layout() -> None:
    config, _ = _config(False)
    header = persist.client_identity(config, 3).header(9)
    assert header.startswith(persist.MAGIC)
    assert header[len(persist.MAGIC) :][:3] == bytes((persist.FORMAT_VERSION, 1, 1))
    assert header[len(persist.MAGIC) + 3 :][:32] == config.digest
    assert header[-36:] == config.session_id + struct.pack(">QIQ", config.round_index, 3, 9)
