"""Quality measures of a registration: similarity, Jacobian determinants, foreground.

Small numpy functions that work on in-memory arrays (one block, one coarse level); the
pipeline applies them block by block.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def ncc(a: Any, b: Any, mask: Any = None) -> float:
    """Normalised cross-correlation of two arrays (over ``mask`` where given); NaN when
    either is constant there."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        a, b = a[m], b[m]
    else:
        a, b = a.ravel(), b.ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def jacobian_determinant(displacement: Any, spacing: Any, direction: Any = None) -> np.ndarray:
    """``det(I + ∂u/∂p)`` of ``p → p + u(p)`` for a ``(3, z, y, x)`` field of z, y, x
    displacements on a grid with ``spacing`` (and ``direction``); one value per voxel.
    Values ≤ 0 are folds."""
    u = np.asarray(displacement, dtype=np.float64)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"expected a (3, z, y, x) field; got shape {u.shape}")
    spacing = np.asarray(spacing, dtype=np.float64)
    jac = np.empty((*u.shape[1:], 3, 3))
    for i in range(3):
        for j in range(3):
            if u.shape[1 + j] > 1:
                jac[..., i, j] = np.gradient(u[i], axis=j) / spacing[j]
            else:
                jac[..., i, j] = 0.0
    if direction is not None and not np.allclose(direction, np.eye(3)):
        # ∂u/∂p = (∂u/∂frame) · Dᵀ, with frame = Dᵀ p
        jac = jac @ np.asarray(direction, dtype=np.float64).T
    jac += np.eye(3)
    return np.linalg.det(jac)


def otsu_threshold(values: Any, bins: int = 256) -> float:
    """Otsu's threshold of the finite ``values`` (between-class variance maximised)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() == v.max():
        return float(v.min()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])
