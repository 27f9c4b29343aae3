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


@pytest.mark.parametrize("part", ["self", "key", "label", "ok"])
def test_a_share_that_is_no_field_element_names_its_sender(part: str) -> None:
    """client_accept_delivery opens every sealed share and checks all limbs in one vector
    operation; a limb >= p is refused, naming the neighbour that sent it."""
    from secagg.crypto import aead, shamir
    from secagg.engine import share_keys as sk

    config, _ = make_config(N, t=T, dim=DIM, bits=BITS)
    receiver, senders, culprit = 0, (1, 2, 3, 4), 3
    keys_ = {v: bytes([v]) * 32 for v in senders}
    sealed = []
    for v in senders:
        self_limbs = np.full(sk.SELF_SHARE_BYTES // 4, 7, dtype=">u4")
        key_limbs = np.full(sk.KEY_SHARE_BYTES // 4, 9, dtype=">u4")
        label = (v, receiver)
        if v == culprit and part == "self":
            self_limbs[-1] = shamir.PRIME
        if v == culprit and part == "key":
            key_limbs[0] = 2**32 - 1
        if v == culprit and part == "label":
            label = (v, receiver + 1)
        plain = sk._PLAIN.pack(*label) + self_limbs.tobytes() + key_limbs.tobytes()
        ad = aead.share_associated_data(config.digest, config.round_index, v, receiver)
        sealed.append(aead.encrypt(keys_[v], plain, ad))
    delivery = wire.ShareDelivery(
        config.session_id, config.round_index, wire.SERVER, receiver,
        senders=senders, ciphertexts=tuple(sealed),
    )  # fmt: skip
    if part == "ok":
        held = sk.client_accept_delivery(config, receiver, keys_, b"s" * 16, delivery)
        assert sorted(held.self_mask_shares) == list(senders)
        return
    match = "mislabelled" if part == "label" else "not a field element"
    with pytest.raises(RemoteProtocolError, match=f"party {culprit} is {match}"):
        sk.client_accept_delivery(config, receiver, keys_, b"s" * 16, delivery)
