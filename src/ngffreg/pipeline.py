"""``ChunkedRegistration``: the seed's pipeline class, a thin face over
:func:`ngffreg.registration.register.register` and its steps.

    reg = ChunkedRegistration("fixed.nii.gz", "moving.nii.gz", "out/",
                              downsample_factor=4, chunk_size=64, overlap_fraction=0.25)
    reg.run_full_pipeline("out/registered.ome.zarr", linear_type="Affine",
                          nonlinear_type_coarse="Greedy", nonlinear_type_fine="Greedy")

or step by step: :meth:`perform_coarse_registration`, :meth:`register_all_chunks`,
:meth:`apply_transforms_and_blend`. The class holds parameters and results; all the work is
in the functional core.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .blocks import BlockPlan
from .errors import InputError
from .registration.coarse import CoarseResult, coarse_register, image_levels
from .registration.execution import block_client
from .registration.options import RegistrationOptions
from .registration.register import (
    RegistrationResult,
    blend_pass,
    register,
    run_pass,
)
from .registration.resolve import resolve
from .transforms import Sequence, Transform, steps_of


class ChunkedRegistration:
    """Chunked registration of ``moving_image_path`` to ``fixed_image_path``.

    Parameters
    ----------
    fixed_image_path, moving_image_path
        Volumes in any format :func:`ngffreg.open_image` reads (or images / pyramids).
    output_dir
        Where :meth:`run_full_pipeline` and :meth:`apply_transforms_and_blend` write by
        default (``output_dir/registered.ome.zarr``).
    downsample_factor
        Pyramid downsampling of the coarse step's level.
    chunk_size
        Block core size: voxels (int or z, y, x) or a length such as ``"2 mm"``.
    overlap_fraction
        Overlap added on each side of a block, as a fraction of its size.
    prefer_dask
        Run blocks in parallel (``workers`` processes, or ``client``'s dask cluster).
    workers, client, fine_level, method, backend, block_levels
        See :func:`ngffreg.registration.register.register` (``block_levels`` and a
        ``client`` apply to :meth:`run_full_pipeline`).
    """

    def __init__(self, fixed_image_path: Any, moving_image_path: Any, output_dir: Any = None,
                 downsample_factor: float = 4, chunk_size: Any = 64,
                 overlap_fraction: float = 0.25, prefer_dask: bool = True, *,
                 workers: int | None = None, client: Any = None, fine_level: int = 0,
                 method: Any = None, backend: str = "ants",
                 block_levels: Any = None) -> None:
        self.fixed_image_path = fixed_image_path
        self.moving_image_path = moving_image_path
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.downsample_factor = downsample_factor
        self.chunk_size = chunk_size
        self.overlap_fraction = overlap_fraction
        self.prefer_dask = prefer_dask
        self.workers = workers if prefer_dask else 1
        self.client = client if prefer_dask else None
        self.fine_level = fine_level
        self.method = method
        self.backend = backend
        self.block_levels = block_levels
        # the options of every step, checked now (the one source of defaults)
        self.options = RegistrationOptions(
            downsample_factor=downsample_factor, chunk_size=chunk_size,
            overlap_fraction=overlap_fraction, workers=self.workers, fine_level=fine_level,
            method=method, backend=backend, block_levels=block_levels)
        self.fixed_levels = image_levels(fixed_image_path, name="fixed")
        self.moving_levels = image_levels(moving_image_path, name="moving")
        self.coarse: CoarseResult | None = None
        self.plan: BlockPlan | None = None
        self.blocks: list[dict[str, Any]] = []
        self.result: RegistrationResult | None = None
        self._work = tempfile.TemporaryDirectory(prefix="ngffreg-chunks-")

    # the seed's methods --------------------------------------------------------------
    def run_full_pipeline(self, output_path: Any = None, linear_type: str = "Affine",
                          nonlinear_type_coarse: str | None = "Greedy",
                          nonlinear_type_fine: str | None = "Greedy",
                          linear_accuracy: str = "medium", coarse_accuracy: str = "medium",
                          fine_accuracy: str = "medium", *, interpolator: str = "linear",
                          blend_sigma: float | None = None,
                          overwrite: bool = False) -> RegistrationResult:
        """Everything in one call: coarse, blocks, blend, warp, output store."""
        self.result = register(
            self.fixed_levels, self.moving_levels, self._output(output_path),
            options=self.options.replace(
                linear_type=linear_type, nonlinear_type_coarse=nonlinear_type_coarse,
                nonlinear_type_fine=nonlinear_type_fine, linear_accuracy=linear_accuracy,
                coarse_accuracy=coarse_accuracy, fine_accuracy=fine_accuracy,
                interpolator=interpolator, blend_sigma=blend_sigma),
            client=self.client, overwrite=overwrite)
        self.coarse, self.plan, self.blocks = (self.result.coarse, self.result.plan,
                                               self.result.blocks)
        return self.result

    def perform_coarse_registration(self, linear_type: str = "Affine",
                                    nonlinear_type: str | None = "Greedy",
                                    linear_accuracy: str = "medium",
                                    nonlinear_accuracy: str = "medium") -> CoarseResult:
        """The coarse step at the level ``downsample_factor`` picks."""
        self.coarse = coarse_register(
            self.fixed_levels, self.moving_levels, linear_type=linear_type,
            nonlinear_type=nonlinear_type, linear_accuracy=linear_accuracy,
            nonlinear_accuracy=nonlinear_accuracy, downsample_factor=self.downsample_factor,
            backend=self.backend)
        return self.coarse

    def register_all_chunks(self, nonlinear_type: str = "Greedy",
                            nonlinear_accuracy: str = "medium") -> list[dict[str, Any]]:
        """Fine registration of every block (after :meth:`perform_coarse_registration`)."""
        if self.coarse is None:
            self.perform_coarse_registration()
        plan = resolve(self.options.replace(nonlinear_type_fine=nonlinear_type,
                                            fine_accuracy=nonlinear_accuracy),
                       self.fixed_levels, client=self.client)
        with block_client(plan.workers, client=self.client) as cluster:
            self.plan, self.blocks = run_pass(
                self.fixed_levels, self.moving_levels, plan.fine_level, plan.chunk_size,
                self.overlap_fraction, self.fixed_levels[self.coarse.fixed_level],
                self.coarse.transform, plan.method, Path(self._work.name), client=cluster)
        return self.blocks

    def apply_transforms_and_blend(self, output_path: Any = None, interpolator: str = "linear",
                                   blend_sigma: float | None = None,
                                   overwrite: bool = False) -> Transform:
        """Blend the block fields, warp the moving volume and write the output store;
        returns the final fixed → moving transform."""
        from .warp import write_warped

        if not self.blocks:
            self.register_all_chunks()
        if self.coarse is None or self.plan is None:
            raise InputError("No blocks to blend: run register_all_chunks() first.")
        fine, _ = blend_pass(self.plan, self.blocks, Path(self._work.name), blend_sigma)
        transform = Sequence(transforms=(fine, *steps_of(self.coarse.transform)))
        write_warped(self.moving_levels, transform, self._output(output_path),
                     like=self.fixed_levels[0], interpolator=interpolator, overwrite=overwrite)
        self.transform = transform
        return transform

    def _output(self, output_path: Any) -> Path:
        if output_path is not None:
            return Path(output_path)
        if self.output_dir is None:
            raise ValueError("Give output_path, or output_dir when creating the pipeline.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.output_dir / "registered.ome.zarr"
