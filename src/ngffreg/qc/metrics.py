"""Quality measures of a registration: similarity, Jacobian determinants, foreground,
the quality of a displacement field.

Small numpy functions that work on in-memory arrays (one block, one coarse level); the
pipeline applies them block by block. :func:`field_report` measures a whole
displacement field chunk by chunk.
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
    zero = np.zeros(u.shape[1:])
    g = [[np.gradient(u[i], axis=j) / spacing[j] if u.shape[1 + j] > 1 else zero
          for j in range(3)] for i in range(3)]
    if direction is not None and not np.allclose(direction, np.eye(3)):
        # ∂u/∂p = (∂u/∂frame) · Dᵀ, with frame = Dᵀ p
        d = np.asarray(direction, dtype=np.float64)
        g = [[sum(g[i][j] * d[k, j] for j in range(3)) for k in range(3)] for i in range(3)]
    (a, b, c), (e, f, h), (k, m, n) = ([g[i][j] + (1.0 if i == j else 0.0) for j in range(3)]
                                       for i in range(3))
    # the 3×3 determinant by cofactors, voxel by voxel
    return a * (f * n - h * m) - b * (e * n - h * k) + c * (e * m - f * k)


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


def _field_gradient(u: np.ndarray, spacing: Any) -> np.ndarray:
    """``∂u_i/∂x_j`` (…, 3, 3) of a (3, z, y, x) field by central differences."""
    g = np.empty((*u.shape[1:], 3, 3))
    for i in range(3):
        for j in range(3):
            g[..., i, j] = (np.gradient(u[i], axis=j) / spacing[j] if u.shape[1 + j] > 1
                            else 0.0)
    return g


def field_report(field: Any, edges: Any = None) -> dict[str, Any]:
    """Quality of a displacement field (a :class:`~ngffreg.transforms.DisplacementField`),
    chunk by chunk: the Jacobian determinant's range, how many voxels fold (≤ 0) and the
    index box holding them; with block ``edges`` (per axis, the core boundaries), the
    largest displacement gradient (Frobenius norm) within one voxel of a block face against
    the largest elsewhere (their ratio: the seam ratio)."""
    import dask.array as da

    from ..sampling import read_region

    grid = field.grid
    data = field.field.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(3, 64, 64, 64))
    spacing, direction = grid.spacing, grid.direction
    bounds = None if edges is None else [np.asarray(e) for e in edges]
    starts = [np.cumsum((0, *c[:-1])) for c in data.chunks[1:]]
    sizes = data.chunks[1:]

    def per_chunk(block_info=None) -> np.ndarray:
        idx = block_info[None]["chunk-location"]
        lo = [int(starts[k][idx[k]]) for k in range(3)]
        hi = [lo[k] + int(sizes[k][idx[k]]) for k in range(3)]
        rlo = [max(0, v - 1) for v in lo]
        rhi = [min(n, v + 1) for v, n in zip(hi, grid.shape, strict=True)]
        region = (slice(None), *(slice(a, b) for a, b in zip(rlo, rhi, strict=True)))
        u = np.asarray(read_region(data, region), dtype=np.float64)
        inner = tuple(slice(a - ra, b - ra) for a, b, ra in zip(lo, hi, rlo, strict=True))
        g = _field_gradient(u, spacing)[inner]
        jac = g if np.allclose(direction, np.eye(3)) else g @ direction.T
        det = np.linalg.det(jac + np.eye(3))
        norm = np.sqrt((g ** 2).sum(axis=(-1, -2)))
        out = np.full((1, 1, 1, 12), np.nan)
        out[..., 0], out[..., 1] = det.min(), det.max()
        folds = det <= 0
        out[..., 2] = folds.sum()
        if folds.any():
            where = np.argwhere(folds) + lo
            out[..., 3:6], out[..., 6:9] = where.min(axis=0), where.max(axis=0)
        if bounds is not None:
            near = np.zeros(det.shape, dtype=bool)
            for k in range(3):
                pos = np.arange(lo[k], hi[k])
                hit = np.zeros(len(pos), dtype=bool)
                for e in bounds[k][1:-1]:  # the face between voxels e-1 and e, ±1 voxel
                    hit |= (pos >= e - 2) & (pos <= e + 1)
                shape = [1, 1, 1]
                shape[k] = len(pos)
                near |= hit.reshape(shape)
            out[..., 9] = norm[near].max() if near.any() else 0.0
            out[..., 10] = norm[~near].max() if (~near).any() else 0.0
        return out

    counts = tuple(len(c) for c in sizes)
    stats = da.map_blocks(per_chunk, chunks=(*((1,) * n for n in counts), (12,)),
                          dtype=np.float64, meta=np.empty((0, 0, 0, 0)))
    s = np.asarray(stats.compute()).reshape(-1, 12)
    report: dict[str, Any] = {"jacobian_min": float(np.nanmin(s[:, 0])),
                              "jacobian_max": float(np.nanmax(s[:, 1])),
                              "folded_voxels": int(np.nansum(s[:, 2]))}
    if report["folded_voxels"]:
        report["folded_box"] = [np.nanmin(s[:, 3:6], axis=0).astype(int).tolist(),
                                np.nanmax(s[:, 6:9], axis=0).astype(int).tolist()]
    if bounds is not None:
        face, inside = float(np.nanmax(s[:, 9])), float(np.nanmax(s[:, 10]))
        report.update(gradient_max_at_faces=face, gradient_max_inside=inside,
                      seam_ratio=face / inside if inside > 0 else float("nan"))
    return report
