"""Built-in synthetic volumes: deterministic, lazy, any size.

Each block is computed from its own voxel coordinates, so a volume of many GiB costs no
memory until written, and the same voxel always gets the same value whatever the chunking.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from .image import make_image


def _blobs(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.15, 0.85, size=(n, 3))
    radii = rng.uniform(0.04, 0.18, size=(n, 3))
    weights = rng.uniform(0.3, 1.0, size=(n, 1))
    return np.hstack([centres, radii, weights])


def _waves(seed: int, n: int = 24) -> np.ndarray:
    """Random plane waves (rows: k_z, k_y, k_x in radians per voxel, phase, weight) with
    wavelengths of 3–9 voxels: a texture that registration can lock onto."""
    rng = np.random.default_rng(seed + 7919)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(3.0, 9.0, size=(n, 1)))
    return np.hstack([k, rng.uniform(0, 2 * np.pi, size=(n, 1)),
                      rng.uniform(0.5, 1.0, size=(n, 1)) / np.sqrt(n)])


def _block(block_info=None, *, shape, blobs, out_dtype, noise, waves=None, texture=0.0):
    info = block_info[None]
    (z0, z1), (y0, y1), (x0, x1) = info["array-location"]
    z = (np.arange(z0, z1, dtype=np.float32)[:, None, None] + 0.5) / shape[0]
    y = (np.arange(y0, y1, dtype=np.float32)[None, :, None] + 0.5) / shape[1]
    x = (np.arange(x0, x1, dtype=np.float32)[None, None, :] + 0.5) / shape[2]
    # an ellipsoidal "organ" with a textured interior and blob-shaped structures
    r2 = ((z - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.45) ** 2 + ((x - 0.5) / 0.44) ** 2
    out = np.where(r2 < 1.0, 0.25 + 0.08 * np.sin(23 * z + 17 * y) * np.cos(19 * x), 0.0)
    for cz, cy, cx, rz, ry, rx, w in blobs:
        d2 = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        out = out + w * np.exp(-d2) * (r2 < 1.0)
    if texture:
        iz = np.arange(z0, z1, dtype=np.float64)[:, None, None]
        iy = np.arange(y0, y1, dtype=np.float64)[None, :, None]
        ix = np.arange(x0, x1, dtype=np.float64)[None, None, :]
        tex = np.zeros(out.shape)
        for kz, ky, kx, phase, w in waves:
            tex += w * np.cos(kz * iz + ky * iy + kx * ix + phase)
        out = out + (texture * tex * (r2 < 1.0)).astype(np.float32)
    if noise:
        iz, iy, ix = np.meshgrid(
            np.arange(z0, z1, dtype=np.uint64),
            np.arange(y0, y1, dtype=np.uint64),
            np.arange(x0, x1, dtype=np.uint64),
            indexing="ij",
        )
        h = (iz * np.uint64(73856093)) ^ (iy * np.uint64(19349663)) ^ (ix * np.uint64(83492791))
        h = (h * np.uint64(2654435761)) % np.uint64(1 << 16)
        out = out + noise * (h.astype(np.float32) / 65535.0 - 0.5)
    out = np.clip(out, 0.0, None)
    if np.issubdtype(out_dtype, np.integer):
        return np.clip(out * 20000.0, 0, np.iinfo(out_dtype).max).astype(out_dtype)
    return out.astype(out_dtype)


def synthetic_volume(
    shape: Sequence[int] = (64, 96, 80),
    *,
    spacing: Sequence[float] = (2.0, 1.0, 1.0),
    origin: Sequence[float] = (10.0, -20.0, 5.0),
    unit: str = "micrometer",
    seed: int = 0,
    dtype: str = "uint16",
    chunks: int | Sequence[int] = 128,
    n_blobs: int = 12,
    noise: float = 0.02,
    texture: float = 0.0,
) -> xr.DataArray:
    """A deterministic synthetic 3-D volume (an ellipsoid with blobs and texture), lazy.

    Parameters
    ----------
    shape : (z, y, x)
        Voxels per axis.
    spacing, origin, unit
        Physical grid (z, y, x); the default is anisotropic with a non-zero origin, so that
        mistakes in axis order or origin show.
    seed : int
        Seed of the blob layout.
    dtype : str
        Output dtype; integers are scaled to about 20000 at the brightest blob.
    chunks : int or (z, y, x)
        Dask chunking.
    texture : float
        Amplitude of a fine texture inside the ellipsoid (random plane waves of 3–9 voxels;
        0: none), which gives registration something to lock onto at the finest scale.

    Examples
    --------
    >>> img = synthetic_volume((8, 9, 10))
    >>> img.shape, str(img.dtype)
    ((8, 9, 10), 'uint16')
    """
    shape = tuple(int(n) for n in shape)
    blobs = _blobs(seed, n_blobs)
    data = da.map_blocks(
        _block,
        dtype=np.dtype(dtype),
        shape=shape,
        blobs=blobs,
        out_dtype=np.dtype(dtype),
        noise=noise,
        waves=_waves(seed),
        texture=float(texture),
        chunks=da.core.normalize_chunks(chunks, shape, dtype=np.dtype(dtype)),
        meta=np.empty((0, 0, 0), dtype),
    )
    return make_image(
        data,
        spacing=spacing,
        origin=origin,
        unit=unit,
        name="image",
        attrs={"source": f"ngffreg.synthetic:synthetic_volume(shape={shape}, seed={seed})"},
    )


def random_deformation(
    grid,
    *,
    seed: int = 0,
    coarse_amplitude: float = 4.0,
    coarse_sigma: float = 16.0,
    fine_amplitude: float = 1.0,
    fine_sigma: float = 4.0,
    control_spacing: float = 2.0,
):
    """A smooth random displacement field with a fine-scale part, for tests with a known
    answer: Gaussian-filtered white noise at two scales (``*_sigma`` in voxels of
    ``grid``), each scaled so that its largest displacement is ``*_amplitude`` voxels (of
    the smallest spacing), sampled every ``control_spacing`` voxels and interpolated
    linearly. Components z, y, x in ``grid``'s unit; ``outside="nearest"``.

    Use it as the moving → fixed map ``S`` (``moving = warp(fixed, S, like=fixed)``); the
    true fixed → moving map is then ``S⁻¹`` (``S.apply_inverse``).
    """
    from scipy import ndimage

    from .image import Grid
    from .transforms import DisplacementField

    rng = np.random.default_rng(seed)
    step = float(control_spacing)
    shape = tuple(int(np.ceil((n - 1) / step)) + 1 for n in grid.shape)
    voxel = float(np.min(grid.spacing))
    total = np.zeros((3, *shape))
    for amplitude, sigma in ((coarse_amplitude, coarse_sigma), (fine_amplitude, fine_sigma)):
        if amplitude <= 0:
            continue
        part = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), sigma / step,
                                                 mode="reflect") for _ in range(3)])
        part *= amplitude * voxel / np.abs(part).max()
        total += part
    coarse = Grid(shape, grid.spacing * step, grid.frame_origin, grid.direction, grid.unit)
    return DisplacementField.from_array(total.astype(np.float32), spacing=coarse.spacing,
                                        origin=coarse.origin, direction=coarse.direction,
                                        unit=grid.unit, outside="nearest")
