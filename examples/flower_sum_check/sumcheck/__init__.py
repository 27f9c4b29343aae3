"""A Flower App that checks secagg's drop-in SecAgg+ end to end: the survivors' exact sum."""

#: Flower's default quantisation (clipping_range 8, quantization_range 2^22).
CLIP = 8.0
Q = 4194304
MAX_WEIGHT = 1000.0


def grid_values(node_id: int, dim: int) -> list[int]:
    """Node ``node_id``'s input as integers on Flower's quantisation grid, in [0, Q]."""
    return [(node_id * 7919 + j * 104729) % (1 << 20) for j in range(dim)]
