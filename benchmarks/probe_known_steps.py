"""Which step of ngffreg's transform is wrong where, on a ``bench_easifish.py --known`` case:
the TRE (against the known map) of the transform from each step on (the fine field and
all after it, the coarse greedy field and after it, the linear steps alone) in boxes of
the fixed image.

    .venv/bin/python benchmarks/probe_known_steps.py benchmarks/_work/easifish_crop/known \\
        '{"corner": [[96,128],[192,256],[128,256]], "centre": [[48,80],[96,160],[192,320]]}'

Boxes are fixed-voxel index ranges z, y, x (level 0); every 97th voxel is a point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_easifish as be

from ngffreg.image import Grid
from ngffreg.io.read import open_image
from ngffreg.transforms import Sequence


def main(folder: Path, boxes: dict[str, list[list[int]]]) -> None:
    case = json.loads((folder / "case.json").read_text())
    steps = list(be.load_transform(case, "ngffreg", folder).transforms)
    truth_map = be.known_truth(case, folder)
    grid = Grid.of(open_image(case["fixed"]))
    for name, box in boxes.items():
        pts = grid.points(tuple(slice(a, b) for a, b in box))[::97]
        truth = truth_map.apply_inverse(pts)
        for k in range(len(steps)):
            part = Sequence(transforms=tuple(steps[k:])) if len(steps) - k > 1 else steps[k]
            err = np.linalg.norm(part.apply(pts) - truth, axis=1)
            print(f"{name}: from step {k} ({type(steps[k]).__name__}): TRE median "
                  f"{np.median(err):.2f}, p95 {np.percentile(err, 95):.2f}, max {err.max():.2f} "
                  f"µm ({len(pts)} points)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
