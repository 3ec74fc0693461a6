"""Block plans and blending, without any registration: fields are written by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ngffreg.blocks import (
    BlockPlan,
    block_shape,
    boundary_indices,
    index_points,
    moving_region,
    plan_blocks,
    subgrid,
)
from ngffreg.errors import InputError
from ngffreg.image import Grid
from ngffreg.registration.blockwise import _write_block, read_record
from ngffreg.registration.reduce import axis_weight, blend, ramp
from ngffreg.transforms import Affine


def _grid(shape=(40, 50, 60), spacing=(2.0, 1.0, 0.5), origin=(5.0, -3.0, 7.0)):
    return Grid.from_origin(shape, spacing, origin, unit="millimeter")


def test_plan_tiles_the_grid_with_overlap():
    grid = _grid()
    plan = plan_blocks(grid, chunk_size=16, overlap_fraction=0.25)
    assert plan.counts == (2, 3, 4)
    assert plan.overlap == (4, 4, 4)
    cover = np.zeros(grid.shape, dtype=int)
    for b in plan.blocks:
        cover[b.core_slices] += 1
        for k in range(3):
            (c0, c1), (r0, r1) = b.core[k], b.region[k]
            assert r0 == max(0, c0 - 4) and r1 == min(grid.shape[k], c1 + 4)
    assert (cover == 1).all()  # cores tile the grid exactly once
    again = BlockPlan.from_dict(plan.to_dict())
    assert again.blocks == plan.blocks and again.edges == plan.edges
    assert np.allclose(again.grid.origin, grid.origin)


def test_mni_grid_with_64_voxel_blocks_has_at_least_27():
    grid = Grid.from_origin((182, 218, 182), (1.0, 1.0, 1.0), unit="millimeter")
    assert len(plan_blocks(grid, 64)) >= 27


def test_chunk_size_as_lengths_and_errors():
    grid = _grid()
    assert block_shape("16 mm", grid) == (8, 16, 32)
    assert block_shape(("16mm", 20, "4000 um"), grid) == (8, 20, 8)
    with pytest.raises(InputError, match="too small"):
        block_shape(4, grid)
    with pytest.raises(InputError, match="length"):
        block_shape("big", grid)
    with pytest.raises(InputError, match="overlap_fraction"):
        plan_blocks(grid, 16, overlap_fraction=1.5)


def test_foreground_skips_empty_blocks():
    grid = _grid((32, 32, 32), (1, 1, 1), (0, 0, 0))
    data = np.zeros(grid.shape, dtype=np.float32)
    data[:16, :16, :16] = 100.0  # signal in one octant only
    plan = plan_blocks(grid, 16, 0.25, foreground=grid.image(data))
    skipped = [b.index for b in plan.blocks if b.skip]
    assert len(skipped) == 7 and (0, 0, 0) not in skipped


def test_boundary_samples_cover_every_face():
    pts = boundary_indices((10, 7, 5), step=4)
    for k, n in enumerate((10, 7, 5)):
        assert set(np.unique(pts[:, k])) >= {0.0, float(n - 1)}
    assert len(np.unique(pts, axis=0)) == len(pts)
    # every point is on a face
    on_face = np.zeros(len(pts), dtype=bool)
    for k, n in enumerate((10, 7, 5)):
        on_face |= (pts[:, k] == 0) | (pts[:, k] == n - 1)
    assert on_face.all()


def test_moving_region_contains_the_whole_mapped_block():
    fixed = _grid((40, 40, 40), (1, 1, 1), (0, 0, 0))
    moving = _grid((60, 60, 60), (1.5, 1.5, 1.5), (-20, -20, -20))
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    t = Affine.from_matrix_offset(rot, [3.0, -2.0, 5.0])
    block = subgrid(fixed, (slice(10, 30), slice(5, 35), slice(0, 20)))
    region = moving_region(block, t, moving, margin=0)
    assert region is not None
    cidx = moving.continuous_index(t.apply(block.points()))
    for k in range(3):
        assert region[k].start <= np.floor(cidx[:, k].min())
        assert region[k].stop >= np.ceil(cidx[:, k].max())
    far = Affine.from_matrix_offset(np.eye(3), [1e4, 0, 0])
    assert moving_region(block, far, moving) is None


def test_subgrid_keeps_physical_positions():
    grid = Grid.from_origin((20, 30, 40), (2.0, 1.0, 0.5), (1.0, 2.0, 3.0),
                           direction=[[0, 1, 0], [1, 0, 0], [0, 0, -1]], unit="millimeter")
    region = (slice(3, 9), slice(4, 10), slice(5, 11))
    sub = subgrid(grid, region)
    assert np.allclose(sub.points(), grid.points(region))
    assert np.allclose(index_points(grid, [[3, 4, 5]]), sub.points()[:1])


def test_ramp_is_a_partition_of_unity():
    t = np.linspace(-2, 2, 101)
    assert np.allclose(ramp(t) + ramp(-t), 1.0)
    assert ramp(np.array([-1.0, 1.0])).tolist() == [0.0, 1.0]
    w0 = axis_weight(np.arange(40.0), (0, 20), 40, 3.0)
    w1 = axis_weight(np.arange(40.0), (20, 40), 40, 3.0)
    assert np.allclose(w0 + w1, 1.0)
    assert w0[0] == 1.0 and w1[-1] == 1.0  # no ramp on the image border


def _records_from(plan, work, field_of, statuses=None):
    records = []
    for b in plan.blocks:
        status = (statuses or {}).get(b.id, "ok")
        pts = index_points(plan.grid, np.argwhere(np.ones(b.shape, bool)) +
                           [r[0] for r in b.region])
        field = np.moveaxis(field_of(pts).reshape(*b.shape, 3), -1, 0)
        core = tuple(slice(c0 - r0, c1 - r0)
                     for (c0, c1), (r0, _) in zip(b.core, b.region, strict=True))
        rec = {"id": b.id, "status": status,
               "core_mean": field[(slice(None), *core)].reshape(3, -1).mean(1).tolist()}
        if status != "ok":
            field = np.zeros_like(field)
        _write_block(work, b, field, rec)
        records.append(read_record(work, b.id))
    return records


def test_blend_reproduces_a_field_every_block_agrees_on(tmp_path):
    grid = _grid((30, 34, 38), (1.0, 1.0, 1.0), (0, 0, 0))
    plan = plan_blocks(grid, 12, 0.25)

    def smooth(p):
        return np.stack([np.sin(p[:, 0] / 7), np.cos(p[:, 1] / 9), 0.1 * p[:, 2]], axis=1)

    records = _records_from(plan, tmp_path, smooth)
    field = blend(plan, records, tmp_path, chunks=16)
    got = np.asarray(field.field.values)
    want = np.moveaxis(smooth(grid.points()).reshape(*grid.shape, 3), -1, 0)
    assert np.abs(got - want).max() < 1e-5


def test_blend_seams_are_smooth_and_failed_blocks_filled(tmp_path):
    grid = _grid((36, 36, 36), (1.0, 1.0, 1.0), (0, 0, 0))
    plan = plan_blocks(grid, 12, 0.25)
    rng = np.random.default_rng(0)
    offsets = {b.id: rng.normal(0, 1, 3) for b in plan.blocks}
    centre = next(b for b in plan.blocks if b.index == (1, 1, 1))

    def per_block(bid):
        return lambda p: np.broadcast_to(offsets[bid], p.shape).copy()

    records = []
    for b in plan.blocks:
        records += _records_from(BlockPlan(plan.grid, 0, plan.size, plan.overlap, plan.edges,
                                           (b,)), tmp_path, per_block(b.id),
                                 {centre.id: "failed"})
    field = np.asarray(blend(plan, records, tmp_path, chunks=16).field.values)
    # the failed block's core centre holds the mean of its usable neighbours
    neigh = [offsets[o.id] for o in plan.neighbours(centre)]
    assert np.allclose(field[:, 18, 18, 18], np.mean(neigh, axis=0), atol=1e-5)
    assert records[centre.id]["filled_with"] is not None
    # a blend of constant blocks changes by at most |Δ| · max ramp slope (π / 4w) per voxel
    width = min(plan.overlap) / 2
    values = [offsets[b.id] for b in plan.blocks if b.id != centre.id] + [np.mean(neigh, 0)]
    jump = max(np.abs(a - b).max() for a in values for b in values)
    grad = max(np.abs(np.diff(field, axis=k)).max() for k in (1, 2, 3))
    assert grad <= jump * np.pi / (4 * width) * 1.8


def test_field_report_finds_folds_and_measures_seams():
    from ngffreg.qc import field_report
    from ngffreg.transforms import DisplacementField

    grid = _grid((24, 24, 24), (1.0, 1.0, 1.0), (0, 0, 0))
    z = np.arange(24.0)[:, None, None] * np.ones((1, 24, 24))
    smooth = np.stack([0.1 * np.sin(z / 4), np.zeros_like(z), np.zeros_like(z)])
    report = field_report(DisplacementField.from_array(smooth, spacing=grid.spacing),
                          edges=[np.array([0, 12, 24])] * 3)
    assert report["folded_voxels"] == 0 and report["jacobian_min"] > 0.9
    assert 0.5 < report["seam_ratio"] < 1.5
    folded = smooth.copy()
    folded[0, 10:14] = -2.0 * z[10:14]  # u_z = -2 z: det = 1 - 2 < 0
    report = field_report(DisplacementField.from_array(folded, spacing=grid.spacing))
    assert report["folded_voxels"] > 0
    lo, hi = report["folded_box"]
    assert 9 <= lo[0] and hi[0] <= 14
    # a jump at a block face shows as a seam ratio far above 1
    jump = smooth.copy()
    jump[1, :, :, 12:] += 1.0
    report = field_report(DisplacementField.from_array(jump, spacing=grid.spacing),
                          edges=[np.array([0, 12, 24])] * 3)
    assert report["seam_ratio"] > 3


def test_field_report_is_the_same_whatever_the_chunks():
    import dask.array as da

    from ngffreg.qc import field_report
    from ngffreg.transforms import DisplacementField

    rng = np.random.default_rng(1)
    u = rng.normal(0, 0.3, (3, 20, 22, 18))
    edges = [np.array([0, 10, 20]), np.array([0, 11, 22]), np.array([0, 9, 18])]
    whole = field_report(DisplacementField.from_array(u, spacing=(2, 1, 1)), edges)
    parts = field_report(DisplacementField.from_array(da.from_array(u, chunks=(3, 7, 5, 6)),
                                                      spacing=(2, 1, 1)), edges)
    for key in ("jacobian_min", "jacobian_max", "folded_voxels", "seam_ratio"):
        assert parts[key] == pytest.approx(whole[key]), key
    assert parts.get("folded_box") == whole.get("folded_box")


def test_auto_block_size_follows_the_memory_budget():
    from ngffreg.blocks import BLOCK_BASE_BYTES, BLOCK_BYTES_PER_VOXEL, auto_block_size

    small, large = auto_block_size("1 GiB"), auto_block_size("4 GiB")
    assert 8 <= small < large and small % 8 == 0
    for budget, side in ((2**30, small), (4 * 2**30, large)):
        grown = (side * 1.5) ** 3
        assert BLOCK_BASE_BYTES + grown * BLOCK_BYTES_PER_VOXEL <= budget
    with pytest.raises(InputError, match="at least"):
        auto_block_size("500 MiB")


def test_random_deformation_has_the_asked_amplitudes_and_is_reproducible():
    from ngffreg.synthetic import random_deformation

    grid = _grid((40, 48, 56), (2.0, 1.0, 1.0), (3.0, -4.0, 5.0))
    s = random_deformation(grid, seed=4, coarse_amplitude=3.0, fine_amplitude=0.0)
    pts = grid.points()
    d = s.apply(pts) - pts
    assert np.abs(d).max() == pytest.approx(3.0, rel=0.05)  # voxels of the smallest spacing
    again = random_deformation(grid, seed=4, coarse_amplitude=3.0, fine_amplitude=0.0)
    assert np.array_equal(again.field.values, s.field.values)
    both = random_deformation(grid, seed=4, coarse_amplitude=3.0, fine_amplitude=1.0)
    extra = both.apply(pts) - s.apply(pts)
    assert 0.5 < np.abs(extra).max() < 1.5
    # invertible: the fixed-point inverse brings points back
    back, residual = both.apply_inverse(both.apply(pts[::97]), return_residual=True)
    assert np.abs(back - pts[::97]).max() < 1e-3 and residual.max() < 1e-3


def test_blend_touches_only_the_blocks_that_reach_a_chunk(tmp_path, monkeypatch):
    """Each chunk of the blend reads (and weighs) only the blocks whose grown region
    overlaps it: counted per chunk against the overlaps worked out by hand."""
    import dask

    from ngffreg.registration import reduce

    grid = _grid((30, 34, 38), (1.0, 1.0, 1.0), (0, 0, 0))
    plan = plan_blocks(grid, 12, 0.25)
    records = _records_from(plan, tmp_path, lambda p: np.zeros((len(p), 3)))
    reads = []
    real = reduce._Blender.field_part
    monkeypatch.setattr(reduce._Blender, "field_part",
                        lambda self, i, box: reads.append(i) or real(self, i, box))
    field = blend(plan, records, tmp_path, chunks=16)
    data = field.field.data
    with dask.config.set(scheduler="synchronous"):
        for index in np.ndindex(*data.numblocks[1:]):
            reads.clear()
            data.blocks[(0, *index)].compute()
            box = [(k * 16, min((k + 1) * 16, n)) for k, n in zip(index, grid.shape, strict=True)]
            reach = {b.id for b in plan.blocks
                     if all(r0 < hi and r1 > lo for (r0, r1), (lo, hi)
                            in zip(b.region, box, strict=True))}
            assert reads and set(reads) <= reach and len(reads) == len(set(reads))
            assert len(reach) < len(plan.blocks)  # a chunk is not reached by every block


def test_a_coarser_blend_holds_the_blends_own_values_on_its_lattice(tmp_path):
    grid = _grid((31, 34, 37), (2.0, 1.0, 0.5), (5.0, -3.0, 7.0))
    plan = plan_blocks(grid, 12, 0.25)
    rng = np.random.default_rng(1)
    offsets = {b.id: rng.normal(0, 1, 3) for b in plan.blocks}
    records = []
    for b in plan.blocks:  # a different field per block: the seams are not smooth
        records += _records_from(BlockPlan(plan.grid, 0, plan.size, plan.overlap, plan.edges,
                                           (b,)), tmp_path,
                                 lambda p, o=offsets[b.id]: o + 0.05 * p)
    full = np.asarray(blend(plan, records, tmp_path, chunks=16).field.values)
    coarse_field = blend(plan, records, tmp_path, chunks=8, factor=2)
    coarse = np.asarray(coarse_field.field.values)
    assert coarse.shape == (3, 16, 18, 19)  # 31 → 0..30 (16); 34 → 0..34 (18, one past)
    g = coarse_field.grid
    assert np.allclose(g.spacing, grid.spacing * 2) and np.allclose(g.origin, grid.origin)
    # inside: exactly the full-resolution blend at every other voxel
    assert np.abs(coarse[:, :, :17, :] - full[:, ::2, ::2, ::2]).max() < 1e-5
    # the point one voxel past y's last continues the last two voxels' slope
    want = 2 * full[:, ::2, 33, ::2] - full[:, ::2, 32, ::2]
    assert np.abs(coarse[:, :, 17, :] - want).max() < 1e-5


def _smooth(p):
    return np.stack([3 * np.sin(p[:, 0] / 40 + 0.3), 2.5 * np.cos(p[:, 1] / 30),
                     2 * np.sin(p[:, 2] / 35) * np.cos(p[:, 0] / 50)], axis=1)


def test_the_storage_rule_coarsens_a_smooth_field_and_keeps_a_rough_one(tmp_path):
    from ngffreg.registration.reduce import FIELD_TOLERANCE, choose_factor

    grid = _grid((40, 44, 48), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    plan = plan_blocks(grid, 16, 0.25)
    factor, report = choose_factor(plan, _records_from(plan, tmp_path / "s", _smooth),
                                   tmp_path / "s")
    assert factor == 4 and report["boxes"] == 8  # of the 18 blocks, spread
    assert report["error_voxel"]["4"]["p99"] <= FIELD_TOLERANCE

    rng = np.random.default_rng(0)
    rough = _records_from(plan, tmp_path / "r", lambda p: rng.normal(0, 0.5, p.shape))
    factor, report = choose_factor(plan, rough, tmp_path / "r")
    assert factor == 1 and report["error_voxel"]["2"]["p99"] > FIELD_TOLERANCE
    # nothing registered: nothing to measure, the blocks' grid
    skipped = [dict(r, status="skipped") for r in rough]
    assert choose_factor(plan, skipped, tmp_path / "r")[0] == 1


def test_warp_through_the_stored_coarser_field_equals_the_full_one(tmp_path):
    """The issue's check: where the rule stores the fine field coarser, the warp through it
    is the warp through the full-resolution blend within 0.01 voxel."""
    from ngffreg.registration.register import blend_pass
    from ngffreg.warp import warp

    grid = _grid((40, 44, 48), (2.0, 1.0, 0.8), (5.0, -3.0, 7.0))
    plan = plan_blocks(grid, 16, 0.25)
    records = _records_from(plan, tmp_path, _smooth)
    full = blend(plan, records, tmp_path, chunks=16)
    stored, report = blend_pass(plan, records, tmp_path)  # factor "auto"
    assert report["storage"]["factor"] >= 2
    assert stored.shape[0] < grid.shape[0] and (tmp_path / "fine").is_dir()
    points = grid.points()
    moved_full, moved_stored = full.apply(points), stored.apply(points)
    gap = np.abs(moved_full - moved_stored) / grid.spacing  # voxels, per axis
    assert gap.max() < 0.01
    # an image warped through each: the same to within what 0.01 voxel moves it
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid.shape],
                          indexing="ij")
    image = grid.image(np.sin(z / 4) * np.cos(y / 5) * np.sin(x / 6) * 100 + 200)
    a = np.asarray(warp(image, full, like=image).values)
    b = np.asarray(warp(image, stored, like=image).values)
    assert np.abs(a - b).max() < 100 * 0.01 * 0.5  # |grad| ≤ 100/4 per voxel, 0.01 voxel


class _Shift:
    """A block method answering a constant displacement (the truth of the test below)."""

    def __init__(self, shift):
        self.shift = np.asarray(shift, dtype=np.float32)

    def __call__(self, fixed, moving, initial, info):
        from ngffreg.registration.greedy import to_field
        from ngffreg.registration.methods import BlockResult

        u = np.broadcast_to(self.shift[:, None, None, None], (3, *fixed.shape)).copy()
        return BlockResult("ok", to_field(u, Grid.of(fixed)))


def test_a_block_on_the_fixed_edge_is_judged_on_the_moving_data_beyond_it():
    """The true map leads the last block's edge voxels 3 voxels past the fixed image's
    edge. Where the moving image goes on there, the judge reads it (as the registered
    image will) and keeps the block; where the moving image ends with the fixed one, the
    voxels the answer leads off the data say nothing about it: the judge leaves them out
    and keeps the block too (it was rejected when they counted as zeros)."""
    from scipy import ndimage

    from ngffreg.registration.blockwise import _register_block
    from ngffreg.transforms import Identity

    rng = np.random.default_rng(2)
    tissue = ndimage.gaussian_filter(rng.random((24, 24, 64)), 1.5).astype(np.float32)
    fixed = Grid.from_origin((24, 24, 40), 1.0, (0.0, 0.0, 0.0)).image(tissue[:, :, 8:48])
    shifted = np.zeros_like(tissue)
    shifted[:, :, 3:] = tissue[:, :, :-3]  # moving(p + 3 x) = fixed(p)
    wide = Grid.from_origin((24, 24, 64), 1.0, (0.0, 0.0, -8.0)).image(shifted)
    cut = wide.isel(x=slice(0, 48))  # the moving image ends where the fixed one does
    plan = plan_blocks(Grid.of(fixed), 20, 0.25)
    last = plan.blocks[-1]
    assert last.region[2][1] == 40 and last.core[2][1] == 40  # on the fixed image's edge
    shift = _Shift((0.0, 0.0, 3.0))
    beyond = _register_block(last, plan, fixed, wide, Identity(), shift)
    ended = _register_block(last, plan, fixed, cut, Identity(), shift)
    assert beyond["status"] == "ok" and beyond["ncc_after"] > 0.99 > beyond["ncc_before"]
    assert beyond["judged_fraction"] == 1  # every core voxel read data
    # where the moving image ends, the voxels led off it are left out of the judgement
    assert ended["status"] == "ok" and ended["ncc_after"] > 0.99 > ended["ncc_before"]
    assert 0.5 < ended["judged_fraction"] < 1


class _Seen:
    """A block method that keeps what it was shown and answers no residual."""

    def __call__(self, fixed, moving, initial, info):
        from ngffreg.registration.greedy import to_field
        from ngffreg.registration.methods import BlockResult

        self.valid = info.moving_valid
        return BlockResult("ok", to_field(np.zeros((3, *fixed.shape), np.float32),
                                          Grid.of(fixed)))


def test_a_block_the_moving_image_covers_in_part_is_fitted_where_it_has_data(tmp_path):
    """The moving image (the fixed tissue shifted 2 voxels along x) starts 14 voxels into
    the first block, as a round that did not image a strip. The block method is told where
    the pre-warped block holds data; the greedy engine fits there and leaves the strip to
    the pre-warp instead of pulling tissue into it (``data_only=False``: 5.5 voxels there,
    Jacobian down to 0.16). A block the moving image does not reach at all is skipped."""
    from conftest import strip_pair
    from ngffreg.qc import jacobian_determinant
    from ngffreg.registration.blockwise import _register_block, read_field
    from ngffreg.registration.methods import Greedy
    from ngffreg.transforms import Identity

    fixed, moving = strip_pair((40, 40), 64, 14, seed=5)
    plan = plan_blocks(Grid.of(fixed), 32, 0.25)
    first = plan.blocks[0]
    assert first.region[2] == (0, 40)

    seen = _Seen()
    _register_block(first, plan, fixed, moving, Identity(), seen)
    assert seen.valid.shape == first.shape
    assert not seen.valid[:, :, :14].any() and seen.valid[:, :, 14:].all()

    rec = _register_block(first, plan, fixed, moving, Identity(), Greedy(), work=tmp_path)
    u = np.asarray(read_field(tmp_path, first.id))
    assert rec["status"] == "ok" and rec["moving_coverage"] == pytest.approx(26 / 40)
    strip = np.abs(u[2][:, :, :10])  # the strip: near the pre-warp
    assert np.median(strip) < 1.0 and strip.max() < 1.5
    assert np.abs(np.median(u[2][:, :, 18:30]) - 2.0) < 0.1  # the tissue: the true shift
    assert jacobian_determinant(u, (1.0, 1.0, 1.0))[:, :, :32].min() > 0.5
    # without data_only the fit fills the strip with tissue pulled from the edge of the data
    _register_block(first, plan, fixed, moving, Identity(), Greedy(data_only=False),
                    work=tmp_path / "d")
    pulled = np.abs(np.asarray(read_field(tmp_path / "d", first.id))[2][:, :, :10])
    assert np.median(pulled) > 3.0

    beyond = moving.assign_coords(x=moving.x + 200.0)  # nowhere near the block
    far = _register_block(first, plan, fixed, beyond, Identity(), seen, work=tmp_path)
    assert far["status"] == "skipped" and "does not reach" in far["message"]
