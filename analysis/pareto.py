"""The non-dominated (Pareto) front of points in two objectives, each minimised or maximised."""
from __future__ import annotations

import numpy as np


def front(x, y, x_dir="min", y_dir="max") -> np.ndarray:
    """A boolean mask: True where no other point is at least as good in both objectives and
    strictly better in one. Points with a non-finite coordinate are never on the front; equal
    points do not dominate each other (both stay). O(n log n)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    sx = x if x_dir == "min" else -x          # both minimised from here on
    sy = y if y_dir == "min" else -y
    ok = np.isfinite(sx) & np.isfinite(sy)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((sy[idx], sx[idx]))]
    mask = np.zeros(len(x), dtype=bool)
    best = np.inf                # lowest sy among points with a strictly smaller sx
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and sx[order[j]] == sx[order[i]]:
            j += 1
        lowest = sy[order[i]]    # sorted by sy within equal sx
        if lowest < best:
            for k in order[i:j]:
                if sy[k] == lowest:
                    mask[k] = True
            best = lowest
        i = j
    return mask
