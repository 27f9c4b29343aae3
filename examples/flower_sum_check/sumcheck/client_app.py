"""ClientApp: a NumPyClient whose fit returns values exactly on Flower's quantisation grid
(x = m 2c/Q - c with num_examples = max_weight), so the quantised input is m, with no rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from secagg.flower import secaggplus_mod
from sumcheck import CLIP, MAX_WEIGHT, Q, grid_values


class GridClient(NumPyClient):
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id

    def fit(self, parameters: Any, config: Any) -> Any:
        dim = int(parameters[0].size)
        m = np.asarray(grid_values(self.node_id, dim), dtype=np.float64)
        x = (m * (2 * CLIP / Q) - CLIP).astype(np.float32)
        return [x], int(MAX_WEIGHT), {}


def client_fn(context: Context) -> Client:
    return GridClient(context.node_id).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
