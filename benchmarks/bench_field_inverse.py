"""Field inverse on a real SyN warp: ngffreg's chunked inverse against ANTs' own.

Runs ``ants.registration(mni, ch2, "SyN", random_seed=1)`` (once; outputs kept in
``benchmarks/_work/syn``), inverts its forward warp with :func:`ngffreg.transforms.invert_field`
and reports, on 20,000 brain points (mni intensity above its 60th percentile, jittered off
the voxel centres), ``|T⁻¹(T(p)) − p|`` in voxels for our inverse, for ANTs' own
``1InverseWarp`` and for point-wise :meth:`apply_inverse`; plus the grid residual report.

Usage::

    NGFFREG_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_field_inverse.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ngffreg.io.read import open_image
from ngffreg.transforms import inverse_report, invert_field
from ngffreg.transforms.files import read_displacement_field

HERE = Path(__file__).resolve().parent


def main() -> None:
    import ants

    data = Path(os.environ.get("NGFFREG_DATA_DIR", HERE.parent.parent / "shared" / "data"))
    work = HERE / "_work" / "syn"
    work.mkdir(parents=True, exist_ok=True)
    fwd, inv_ants = work / "syn_1Warp.nii.gz", work / "syn_1InverseWarp.nii.gz"
    if not fwd.is_file():
        ants.registration(ants.image_read(str(data / "ants/mni.nii.gz")),
                          ants.image_read(str(data / "ants/ch2.nii.gz")), "SyN",
                          random_seed=1, outprefix=str(work / "syn_"))
    warp = read_displacement_field(fwd).compute()
    theirs = read_displacement_field(inv_ants).compute()
    start = time.perf_counter()
    ours = invert_field(warp).compute()
    seconds = time.perf_counter() - start
    report = {"invert_seconds": round(seconds, 1), "grid": inverse_report(ours)}

    rng = np.random.default_rng(7)
    brain = open_image(data / "ants/mni.nii.gz")
    values = np.asarray(brain.data.compute())
    idx = np.argwhere(values > np.percentile(values, 60))
    idx = idx[rng.choice(len(idx), 20_000, replace=False)]
    p = np.stack([brain.coords[d].values[idx[:, k]] for k, d in enumerate("zyx")], axis=1)
    p = p + rng.uniform(-0.5, 0.5, size=p.shape)
    voxel = min(warp.spacing)
    q = warp.apply(p)
    for name, back in (("ngffreg_invert_field", ours.apply(q)),
                       ("ants_1InverseWarp", theirs.apply(q)),
                       ("ngffreg_apply_inverse", warp.apply_inverse(q))):
        err = np.linalg.norm(back - p, axis=1) / voxel
        report[name] = {"median_voxels": float(np.median(err)),
                        "p99_voxels": float(np.percentile(err, 99)),
                        "max_voxels": float(err.max())}
    print(json.dumps(report, indent=2))
    out = HERE / "results" / "field_inverse.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
