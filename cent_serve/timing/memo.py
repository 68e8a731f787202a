"""Values memoised by context, packed: one float64 row a context in a dense array and a filled mask,
instead of a dictionary of small objects.

A timer asks for its costs at every context a sequence reaches, up to the model's `max_seq_len`
(131,072 tokens for Llama 3.1): a dictionary of a tuple or a small array a context held about
800 bytes a context per timer (`benchmarks/timing_memo.py`), and every device process builds its
own timers. Here a context costs its row's 8 bytes a value and a byte of mask.
"""
from __future__ import annotations

import numpy as np


class ContextMemo:
    """`width` float64 values for each context filled (`put`), read back as they were put (`get`).

    The rows grow geometrically as larger contexts are put, to no more than `limit` rows (the
    model's max_seq_len + 1: the contexts a timer is asked for) unless a larger context is put.
    """

    def __init__(self, width: int, limit: int) -> None:
        assert width >= 1 and limit >= 1, (width, limit)
        self.width, self.limit = width, limit
        self.values = np.zeros((0, width))  # (contexts, width)
        self.filled = np.zeros(0, dtype=bool)  # (contexts,)

    def get(self, context: int) -> np.ndarray | None:
        """(width,) the values put at `context` (a read-only view), or None if none were."""
        if context < self.filled.shape[0] and self.filled[context]:
            return self.values[context]
        return None

    def put(self, context: int, values) -> np.ndarray:
        """Keep `values` (width numbers) for `context`; returns them as `get` will."""
        assert context >= 0, context
        n = self.filled.shape[0]
        if context >= n:
            grow = max(context + 1, min(max(2 * n, 64), self.limit))
            rows = np.zeros((grow, self.width))
            rows[:n] = self.values
            rows.flags.writeable = False
            self.values = rows
            self.filled = np.concatenate([self.filled, np.zeros(grow - n, dtype=bool)])
        self.values.flags.writeable = True
        self.values[context] = values
        self.values.flags.writeable = False
        self.filled[context] = True
        return self.values[context]

    @property
    def nbytes(self) -> int:
        """Bytes of the rows and the mask."""
        return self.values.nbytes + self.filled.nbytes
