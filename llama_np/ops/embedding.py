"""The token embedding: a row lookup, and its gradient (a scatter-add into the table)."""
import numpy as np


def embedding_forward(ids, table):
    """Row lookup: h[t] = table[ids[t]]. `table` [V, D] may be quantized (rows dequantized
    one by one)."""
    # ids: [T] -> h: [T, D]
    h = table[ids] if isinstance(table, np.ndarray) else table.rows(ids)
    dtype = np.float64 if h.dtype == np.float64 else np.float32  # float64 only in gradient checks
    return h.astype(dtype, copy=False), (ids, table.shape)


def embedding_backward(dh, cache, trainable_rows=None, into=None):
    """Gradient of the lookup with respect to the table: every occurrence of a token adds
    its output gradient to that token's row, dtable[v] = Σ_{t: ids[t] = v} dh[t].

    `trainable_rows` (array of row ids, or None for all) keeps the gradient of those rows
    only — the paper's option of training just the embeddings of the newly added tokens.
    `into`: a [V, D] gradient to add the rows to in place (a tied output head's, the same
    parameter's), instead of a new table of zeros."""
    ids, (n_rows, dim) = cache
    ids, dh = ids.reshape(-1), dh.reshape(-1, dim)                 # [T], [T, D]
    if trainable_rows is not None:         # occurrences of frozen rows add nothing
        trains = np.zeros(n_rows, dtype=bool)
        trains[trainable_rows] = True
        keep = trains[ids]
        ids, dh = ids[keep], dh[keep]
    dtable = np.zeros((n_rows, dim), dtype=dh.dtype) if into is None else into   # [V, D]
    np.add.at(dtable, ids, dh)                                     # repeated ids accumulate
    return dtable
