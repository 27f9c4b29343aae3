"""A malicious *party* cannot silently corrupt the sum or sabotage its neighbourhood.

Outside the semi-honest threat model, but cheap to defend: forged self-mask shares are caught by
the ShareKeys commitment, low-order X25519 keys are refused at AdvertiseKeys, and a rejected
masked vector leaves no partial sum behind.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import make_config

from secagg import encoding
from secagg import messages as wire
from secagg.engine import ClientEngine, ServerEngine
from secagg.errors import EncodingError, RemoteProtocolError

N, T, DIM, BITS = 6, 3, 16, 20


def _round_until_unmask(seed: int = 0):  # type: ignore[no-untyped-def]
    config, _ = make_config(N, t=T, dim=DIM, bits=BITS)
    gen = np.random.default_rng(seed)
    server = ServerEngine(config)
    clients = {u: ClientEngine(config, u) for u in range(N)}
    pending: list[bytes] = []
    for c in clients.values():
        c.set_input(gen.integers(0, 2**BITS, size=DIM))
        pending += [wire.encode(m) for m in c.start()]
    while True:
        out: list[wire.Message] = []
        for data in pending:
            out += server.receive(data)
        if out and isinstance(out[0], wire.UnmaskRequest):
            return server, clients, out
        pending = [
            wire.encode(r) for m in out for r in clients[m.recipient].receive(wire.encode(m))
        ]


def test_forged_self_mask_share_is_detected_not_silently_summed() -> None:
    server, clients, requests = _round_until_unmask()
    responses = [clients[m.recipient].receive(wire.encode(m))[0] for m in requests]
    # Party 0 adds an offset to every self-mask share it reveals (a valid field element).
    forged = responses[0]
    assert isinstance(forged, wire.UnmaskResponse)
    shares = tuple(
        (((int.from_bytes(s[:4], "big") + 1) % 4294967291).to_bytes(4, "big") + s[4:])
        for s in forged.self_mask_shares
    )
    responses[0] = dataclasses.replace(forged, self_mask_shares=shares)
    with pytest.raises(RemoteProtocolError, match="inconsistent"):
        for r in responses:
            server.receive(wire.encode(r))
    assert server.result is None


def test_low_order_public_key_is_refused_at_advertise() -> None:
    config, _ = make_config(N, t=T, dim=DIM, bits=BITS)
    server = ServerEngine(config)
    (msg,) = ClientEngine(config, 0).start()
    assert isinstance(msg, wire.AdvertiseKeys)
    bad = dataclasses.replace(msg, keys=dataclasses.replace(msg.keys, mask_public=bytes(32)))
    with pytest.raises(RemoteProtocolError, match="X25519"):
        server.receive(wire.encode(bad))


def test_rejected_packed_vector_leaves_no_partial_sum() -> None:
    bits, count = 13, 11  # 143 bits: 1 padding bit in the last byte, last group incomplete
    values = np.arange(1, count + 1, dtype=np.uint16)
    payload = bytearray(encoding.pack(values, bits))
    payload[-1] |= 0x80  # a non-zero padding bit
    acc = np.full(count, 7, dtype=np.uint16)
    with pytest.raises(EncodingError):
        encoding.add_packed(acc, bytes(payload), bits)
    assert np.all(acc == 7)
    # A forged value in the padding slots of the last group (bits past count*B in whole bytes).
    bits, count = 12, 9  # groups of 8: the second group holds 1 value and 7 padding slots
    payload = bytearray(encoding.pack(np.ones(count, dtype=np.uint16), bits))
    assert len(payload) == 14
    payload[-1] = 0x10  # bits 108..111: value slot 1 of the last group
    acc = np.zeros(count, dtype=np.uint16)
    with pytest.raises(EncodingError):
        encoding.add_packed(acc, bytes(payload), bits)
    assert not acc.any()
