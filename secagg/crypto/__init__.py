"""Raw cryptographic primitives: pure functions over the ``cryptography`` package and numpy.

Hazardous material in the pyca sense: the engine composes these into the protocol; users should
not need them directly. Each module is one primitive:

- :mod:`kdf`: HKDF-SHA256 with one label per purpose, binding session, round and party ids.
- :mod:`keys`: X25519 key agreement and Ed25519 signatures.
- :mod:`aead`: AES-256-GCM for Shamir shares in transit.
- :mod:`prg`: AES-128-CTR keystream expanded straight into numpy arrays (masks mod 2^B).
- :mod:`shamir`: vectorized Shamir secret sharing over GF(2^32 - 5).
"""
