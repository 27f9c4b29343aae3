"""The ClientApp side: ``secaggplus_mod`` / ``secagg_mod``, drop-ins for Flower's mods.

A Flower mod is ``(message, context, call_next) -> message``. This one hosts a sans-I/O
:class:`~secagg.engine.ClientEngine`: each train message of a secagg round carries the engine's
wire message for this node; the mod feeds it to the engine, persists the engine in
``context.state`` (Flower keeps a node's context between messages, in simulation and in
deployment) and replies with the engine's answer. ``call_next`` (the user's training) runs only
at the masked-vector stage; its FitRes is quantised exactly as Flower does
(:mod:`secagg.flower.quantization`) and only the masked vector leaves the node.

Any refusal raises a typed :class:`~secagg.errors.SecAggError`; Flower turns a ClientApp
exception into an error reply, which the server treats as this node dropping out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np

from secagg import messages as wire
from secagg.config import ClientPolicy, RoundConfig
from secagg.dp.mechanisms import (
    block_noise_floors,
    block_sigma2,
    encode_blocks,
    encode_client,
    rounding_norm_bound,
)
from secagg.encoding import FixedPointEncoder
from secagg.engine import ClientEngine
from secagg.errors import ConfigError, LocalProtocolError, PolicyError, RemoteProtocolError
from secagg.flower import _codec, _compat, records
from secagg.flower.quantization import (
    FlowerQuantizer,
    UpdateLayout,
    dp_from_fields,
    flat_size,
)

try:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common import Parameters, parameters_to_ndarrays
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "secagg.flower needs Flower: pip install 'secagg[flower]' (flwr[simulation]==1.42.0)"
    ) from exc

#: The engine message each stage must carry from the server.
_PAYLOAD_OF = {
    records.SHARE_KEYS: wire.MessageType.KEY_DIRECTORY,
    records.COLLECT_MASKED_VECTORS: wire.MessageType.SHARE_DELIVERY,
    records.CONSISTENCY: wire.MessageType.SURVIVOR_LIST,
    records.UNMASK: wire.MessageType.UNMASK_REQUEST,
}

CallNext = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, CallNext], Message]

#: The ``encoding`` of the round meta for message-API apps (see ``_encode_update``).
FIXED_POINT = "fixed_point"
#: The ``encoding`` of a distributed-DP round (DDGauss, ``SecAggPlusWorkflow(dp_epsilon=...)``).
DDGAUSS = "ddgauss"
#: The ArrayRecord a message-API ClientApp replies with (its update on its part).
UPDATE_RECORD = "secagg.update"

#: node_config key naming a file with the node's state-sealing key (64 hex digits).
STATE_KEY_FILE = "secagg-state-key-file"
#: node_config key naming a file with the node's Ed25519 signing key (64 hex digits), for the
#: active mode when no key is passed to :func:`make_secaggplus_mod`.
SIGNING_KEY_FILE = "secagg-signing-key-file"


def make_secaggplus_mod(
    *,
    policy: ClientPolicy | None = None,
    signing_key: bytes | None = None,
    state_key: bytes | None = None,
    require_dp: bool = False,
) -> Mod:
    """A mod with this node's own requirements.

    Args:
        policy: a :class:`~secagg.config.ClientPolicy` (minimum threshold, neighbours, block
            holders, active mode...): the node refuses any round configured below it, before it
            sends anything (:class:`~secagg.errors.PolicyError`).
        signing_key: the node's long-term Ed25519 private key (32 bytes) for the active mode.
            Without it, the mod reads the file named by ``node_config["secagg-signing-key-file"]``
            when the server asks for the active mode.
        state_key: a 32-byte key sealing the engine state the node keeps in its Flower context
            between messages (AES-256-GCM, with a counter so an older state is never accepted).
            Without it, the mod reads ``node_config["secagg-state-key-file"]`` if set, else the
            state stays in the clear in the node's own context (never sent anywhere).
        require_dp: refuse any round without distributed DP (the drop-in's ``dp_epsilon`` or
            the parameter-part app's ``dp-epsilon``), so that a server cannot switch a node's
            noise off by sending a plain round (:class:`~secagg.errors.PolicyError`). The node
            still cannot check the noise level the server chose, only that there is noise.
    """
    node_policy = policy if policy is not None else ClientPolicy()

    def secaggplus_mod(msg: Message, ctxt: Context, call_next: CallNext) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        incoming = msg.content.config_records
        if records.RECORD_KEY not in incoming:
            if records.FLOWER_RECORD_KEY in incoming:
                raise records.NamespaceError(records.FLOWER_SERVER_WITH_OUR_MOD)
            raise records.NamespaceError(records.NO_SECAGG_RECORD)
        session = _NodeSession(node_policy, signing_key, state_key, require_dp=require_dp)
        return session.handle(msg, ctxt, call_next)

    return secaggplus_mod


class _NodeSession:
    """One message's worth of work on the node (the state lives in ``context.state``)."""

    def __init__(
        self,
        policy: ClientPolicy,
        signing_key: bytes | None,
        state_key: bytes | None,
        *,
        require_dp: bool = False,
    ) -> None:
        self.policy = policy
        self.signing_key = signing_key
        self.state_key = state_key
        self.require_dp = require_dp

    def handle(self, msg: Message, ctxt: Context, call_next: CallNext) -> Message:
        record = msg.content.config_records[records.RECORD_KEY]
        stage = record.get("stage")
        if stage not in records.STAGES:
            raise RemoteProtocolError(f"unknown secagg.flower stage {stage!r}")
        if stage == records.SETUP:
            state, engine, out = self._setup(record, msg, ctxt)
            reply_content = RecordDict()
        else:
            state = self._load_state(ctxt, stage)
            engine = self._engine(state, ctxt)
            payload = record.get("payload")
            if not isinstance(payload, bytes) or len(payload) > records.MAX_PAYLOAD_BYTES:
                raise RemoteProtocolError(f"stage {stage}: the record has no valid payload")
            if wire.peek_type(payload) is not _PAYLOAD_OF[stage]:
                raise RemoteProtocolError(
                    f"stage {stage}: the payload is not a {_PAYLOAD_OF[stage]}"
                )
            reply_content = RecordDict()
            if stage == records.COLLECT_MASKED_VECTORS:
                reply_content = self._train(state, engine, msg, ctxt, call_next)
            out = engine.receive(payload)
        if stage == records.UNMASK or engine.failed:
            ctxt.state.config_records.pop(records.STATE_KEY, None)
        else:
            # Each stage's sealed state carries a larger counter: an older one is refused.
            counter = records.STAGES.index(stage) + 1
            key = self._state_key(ctxt)
            state["engine"] = _compat.engine_to_bytes(engine, key=key, counter=counter)
            state["counter"] = counter
            state["stage"] = stage
            ctxt.state.config_records[records.STATE_KEY] = ConfigRecord(
                cast(Any, {"blob": _codec.encode(state)})
            )
        if len(out) != 1:
            raise LocalProtocolError(f"stage {stage}: the engine produced {len(out)} messages")
        reply_content.config_records[records.RECORD_KEY] = ConfigRecord(
            cast(Any, {"stage": stage, "payload": wire.encode(out[0])})
        )
        return Message(reply_content, reply_to=msg)

    # -- stages ----------------------------------------------------------------------------

    def _setup(
        self, record: ConfigRecord, msg: Message, ctxt: Context
    ) -> tuple[dict[str, Any], ClientEngine, list[wire.Message]]:
        raw_config, raw_round = record.get("config"), record.get("round")
        if not isinstance(raw_config, bytes) or not isinstance(raw_round, bytes):
            raise RemoteProtocolError("setup: the record lacks the round configuration")
        config = _compat.config_from_bytes(raw_config)
        meta = _codec.decode(raw_round)
        if not isinstance(meta, dict):
            raise RemoteProtocolError("setup: malformed round description")
        node_ids = meta.get("node_ids")
        if not isinstance(node_ids, list) or len(node_ids) != config.num_parties:
            raise RemoteProtocolError("setup: the node list does not match the configuration")
        me = msg.metadata.dst_node_id
        if node_ids.count(me) != 1:
            raise RemoteProtocolError(f"setup: this node ({me}) is not in the round's node list")
        party = node_ids.index(me)
        if self.require_dp and meta.get("encoding") != DDGAUSS and meta.get("dp") is None:
            raise PolicyError(
                "configuration refused by this node's policy: distributed DP required"
                f" (require_dp=True), the round has encoding={meta.get('encoding', 'flower')!r}"
                " without noise"
            )
        if meta.get("encoding", "flower") == "flower":
            quant = _quantizer(meta)
            update = _update_layout(meta)
            if flat_size(_shapes(meta)) != update.num_params + 1:
                raise RemoteProtocolError("setup: parameter shapes do not match the vector length")
            # The vector (and, part-wise, the blocks) must be the ones this layout fills.
            update.check(config)
            needed = quant.modulus_bits(2**config.modulus_bits, config.num_parties)
            if needed > config.modulus_bits:
                raise ConfigError(
                    f"setup: modulus_bits={config.modulus_bits} cannot hold a sum of"
                    f" {config.num_parties} values in [0, {quant.quantization_range}]"
                    f" (needs {needed})"
                )
        elif meta.get("encoding") == DDGAUSS:
            params, _ = dp_from_fields(cast(dict[str, Any], meta.get("dp")))
            if (
                params.padded_dim != config.dim
                or params.bits != config.modulus_bits
                or params.dim != flat_size(_shapes(meta)) - 1
            ):
                raise RemoteProtocolError("setup: DP parameters do not match the configuration")
        elif meta.get("encoding") != FIXED_POINT:
            raise RemoteProtocolError(f"setup: unknown encoding {meta.get('encoding')!r}")
        state: dict[str, Any] = {
            "config": raw_config,
            "round": raw_round,
            "party": party,
            "signing_key": self._signing_key(config, ctxt),
        }
        engine = self._engine(state, ctxt, fresh=True)
        return state, engine, engine.start()

    def _train(
        self,
        state: dict[str, Any],
        engine: ClientEngine,
        msg: Message,
        ctxt: Context,
        call_next: CallNext,
    ) -> RecordDict:
        """Run the user's fit, quantise its FitRes and give the engine its input."""
        meta = _codec.decode(state["round"])
        out_msg = call_next(msg, ctxt)
        if out_msg.has_error():
            raise LocalProtocolError(f"the ClientApp's training failed: {out_msg.error.reason}")
        if meta.get("encoding") == FIXED_POINT:
            return self._encode_update(meta, engine, out_msg)
        fitres = compat.recorddict_to_fitres(out_msg.content, keep_input=True)
        arrays = parameters_to_ndarrays(fitres.parameters)
        shapes = _shapes(meta)
        got = [tuple(np.shape(a)) for a in arrays]
        if got != shapes:
            raise LocalProtocolError(
                f"the ClientApp returned parameters of shapes {got[:4]}..., the round expects"
                f" {shapes[:4]}..."
            )
        if meta.get("encoding") == DDGAUSS:
            # Distributed DP: clip to L2 norm, rotate, round, add discrete Gaussian noise from
            # the CSPRNG (secagg.dp.mechanisms.encode_client); the weight is not used.
            params, rotation = dp_from_fields(cast(dict[str, Any], meta["dp"]))
            flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
            words = encode_client(flat, params, rotation)
            secure_names: tuple[str, ...] = ()
        else:
            update = _update_layout(meta)
            secure_names = update.metric_names
            layout = engine.config.layout
            # Part-wise rounds: the node masks only the blocks it holds this round.
            blocks = None if layout is None else layout.holdings[engine.party]
            words = update.encode(
                _quantizer(meta),
                arrays,
                fitres.num_examples,
                fitres.metrics,
                blocks,
                engine.config.modulus_bits,
            )
        engine.set_input(words)
        # Only the masked vector leaves the node; Flower's FitRes keeps its shape for the
        # strategy, with the example count and metrics hidden when the server asked for it.
        # Securely aggregated metrics are inside the masked vector and never in the clear.
        fitres.parameters = Parameters(tensors=[], tensor_type="numpy.ndarray")
        if meta.get("hide_num_examples"):
            fitres.num_examples = 1
        if meta.get("hide_metrics"):
            fitres.metrics = {}
        for name in secure_names:
            fitres.metrics.pop(name, None)
        return compat.fitres_to_recorddict(fitres, keep_input=True)

    def _encode_update(
        self, meta: dict[str, Any], engine: ClientEngine, out_msg: Message
    ) -> RecordDict:
        """Message-API training (the parameter-part app): the reply's ArrayRecord
        :data:`UPDATE_RECORD` holds ``values`` (the node's change on its part, in block order)
        and, with a count channel, ``uploaded`` (0/1 per value). Encoded in fixed point
        (clip, scale, CSPRNG stochastic rounding), masked; the plaintext never leaves.

        With distributed DP (``meta["dp"]``, :mod:`secagg.flower.partwise`) the change is
        clipped to an L2 norm, scaled, rounded conditionally and every block gets its discrete
        Gaussian noise in integers before masking, so no block sum is ever un-noised."""
        content = out_msg.content
        update = content.array_records.pop(UPDATE_RECORD, None)
        if update is None or "values" not in update:
            raise LocalProtocolError(
                f"the ClientApp's reply lacks the ArrayRecord {UPDATE_RECORD!r} with 'values'"
            )
        config = engine.config
        values = np.asarray(update["values"].numpy(), dtype=np.float64).ravel()
        dp = meta.get("dp")
        if dp is not None:
            # Kairouz, Liu, Steinke 2021 on parts (issue 11's calibration): the node derives
            # every block's noise floor (holders guaranteed in any released sum) from the
            # configuration itself and adds ceil(T / floor) per coordinate of the block, so the
            # server cannot give a thin block less noise. The count channel would be un-noised.
            try:
                fields = cast(dict[str, Any], dp)
                clip, scale = float(fields["clip"]), float(fields["scale"])
                beta, total = float(fields["beta"]), Fraction(str(fields["sigma2_total"]))
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                raise RemoteProtocolError(f"setup: bad distributed-DP parameters: {exc}") from None
            if not (math.isfinite(clip) and clip > 0 and math.isfinite(scale) and scale > 0):
                raise RemoteProtocolError(f"setup: dp clip={clip} and scale={scale} must be > 0")
            if not (0 <= beta < 1 and total > 0) or meta.get("count_channel"):
                raise RemoteProtocolError(
                    f"setup: dp beta={beta}, sigma2_total={total}, count_channel="
                    f"{meta.get('count_channel')!r} (must be [0, 1), > 0, off)"
                )
            layout = config.blocks
            floors = block_noise_floors(
                [len(h) for h in layout.holders],
                config.num_parties,
                config.threshold,
                layout.min_holders,
            )
            sigma2 = block_sigma2(total, floors)
            mine = layout.holdings[engine.party]
            words = encode_blocks(
                values,
                [layout.block_sizes[b] for b in mine],
                [sigma2[b] for b in mine],
                clip=clip,
                scale=scale,
                norm_bound=rounding_norm_bound(scale, config.dim, beta),
                bits=config.modulus_bits,
            )
        else:
            try:
                encoder = FixedPointEncoder(
                    float(meta["clip"]),
                    int(meta["value_bits"]),
                    config.modulus_bits,
                    config.num_parties,
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise RemoteProtocolError(f"setup: bad fixed-point parameters: {exc}") from None
            words = encoder.encode(values)
        if meta.get("count_channel"):
            if "uploaded" not in update:
                raise LocalProtocolError("the round has a count channel: send 'uploaded' flags")
            flags = np.asarray(update["uploaded"].numpy()).ravel() != 0
            if flags.size != values.size:
                raise LocalProtocolError("'uploaded' must have one flag per value")
            words = np.concatenate([words, flags.astype(words.dtype)])
        expected = config.input_length(engine.party)
        if words.size != expected:
            raise LocalProtocolError(
                f"the update has {words.size} words, this node's part needs {expected}"
            )
        engine.set_input(words)
        if meta.get("hide_metrics") or dp is not None:  # metrics (row counts) are not noised
            for name in list(content.metric_records):
                content.metric_records.pop(name)
        return content

    # -- plumbing --------------------------------------------------------------------------

    def _load_state(self, ctxt: Context, stage: str) -> dict[str, Any]:
        held = ctxt.state.config_records.get(records.STATE_KEY)
        if held is None or not isinstance(held.get("blob"), bytes):
            raise RemoteProtocolError(f"stage {stage} arrived before this node's setup")
        state = _codec.decode(cast(bytes, held["blob"]))
        if not isinstance(state, dict):
            raise LocalProtocolError("the node's persisted secagg state is corrupt")
        return state

    def _engine(self, state: dict[str, Any], ctxt: Context, *, fresh: bool = False) -> ClientEngine:
        """The node's engine; the policy is checked against the configuration every time."""
        config: RoundConfig = _compat.config_from_bytes(state["config"])
        engine = ClientEngine(
            config, state["party"], signing_key=state["signing_key"], policy=self.policy
        )
        if not fresh:
            _compat.engine_load_bytes(
                engine,
                state["engine"],
                key=self._state_key(ctxt),
                min_counter=int(state.get("counter", 0)),
            )
        return engine

    def _state_key(self, ctxt: Context) -> bytes | None:
        if self.state_key is not None:
            return self.state_key
        return _key_file(ctxt, STATE_KEY_FILE, "state key")

    def _signing_key(self, config: RoundConfig, ctxt: Context) -> bytes | None:
        if not config.active:
            return None
        if self.signing_key is not None:
            return self.signing_key
        key = _key_file(ctxt, SIGNING_KEY_FILE, "signing key")
        if key is None:
            raise ConfigError(
                "the server asks for the active mode but this node has no signing key: pass"
                f" signing_key= to make_secaggplus_mod or set node_config[{SIGNING_KEY_FILE!r}]"
            )
        return key


def _key_file(ctxt: Context, name: str, what: str) -> bytes | None:
    """A 32-byte key, as 64 hex digits in the file named by ``node_config[name]`` (if set)."""
    path = ctxt.node_config.get(name)
    if path is None:
        return None
    try:
        key = bytes.fromhex(Path(str(path)).read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the {what} file {path!r}: {exc}") from None
    if len(key) != 32:
        raise ConfigError(f"{what} file {path!r} must hold 32 bytes as 64 hex digits")
    return key


def _quantizer(meta: dict[str, Any]) -> FlowerQuantizer:
    try:
        return FlowerQuantizer(
            clipping_range=float(meta["clipping_range"]),
            quantization_range=int(meta["quantization_range"]),
            max_weight=float(meta["max_weight"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"setup: bad quantisation parameters: {exc}") from None


def _update_layout(meta: dict[str, Any]) -> UpdateLayout:
    """The round's :class:`UpdateLayout` (Flower's plain layout when the server sent none)."""
    fields = meta.get("update")
    if fields is None:
        return UpdateLayout(flat_size(_shapes(meta)) - 1)
    return UpdateLayout.from_fields(fields)


def _shapes(meta: dict[str, Any]) -> list[tuple[int, ...]]:
    shapes = meta.get("shapes")
    if not isinstance(shapes, list) or not all(
        isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes
    ):
        raise RemoteProtocolError("setup: malformed parameter shapes")
    return [tuple(s) for s in shapes]


#: Drop-in for ``flwr.client.mod.secaggplus_mod`` (default policy, semi-honest or key file).
secaggplus_mod: Mod = make_secaggplus_mod()
#: Drop-in for ``flwr.client.mod.secagg_mod``: the same node logic (the server picks the graph).
secagg_mod: Mod = secaggplus_mod
