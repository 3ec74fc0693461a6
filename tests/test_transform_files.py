"""Transform files of ITK, ANTs, c3d/greedy and BigWarp, checked against the tools themselves.

Points in our API are z, y, x; ITK and ANTs take x, y, z. Every comparison here converts
with plain index reversal (``[:, ::-1]``) written out in the test, so a mistake in
``ngffreg.itk_bridge`` cannot cancel itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ngffreg
from ngffreg.errors import InputError, InputNotFoundError, TransformError
from ngffreg.transforms import Affine, DisplacementField, Sequence, ThinPlateSpline
from ngffreg.transforms.files import (
    bigwarp_transform,
    load_transform_files,
    read_ants_transforms,
    read_bigwarp_landmarks,
    read_c3d_matrix,
    read_displacement_field,
    read_itk_transform,
    write_ants_transforms,
    write_bigwarp_landmarks,
    write_c3d_matrix,
    write_displacement_field,
    write_itk_transform,
)

itk = pytest.importorskip("itk")

REV = [2, 1, 0]  # z, y, x <-> x, y, z


def _random_affine(rng: np.random.Generator, scale: float = 0.1) -> Affine:
    m = np.eye(4)
    m[:3, :3] += rng.normal(0, scale, (3, 3))
    m[:3, 3] = rng.normal(0, 10, 3)
    return Affine(matrix=m)


def _smooth_field(rng: np.random.Generator, shape=(12, 14, 16), spacing=(2.0, 1.5, 1.0),
                  origin=(-5.0, 3.0, 7.0), direction=None) -> DisplacementField:
    """A smooth random field (amplitude ~2 units) on a small grid."""
    from scipy import ndimage

    data = np.stack([ndimage.gaussian_filter(rng.normal(0, 20, shape), 2) for _ in range(3)])
    return DisplacementField.from_array(data, spacing=spacing, origin=origin,
                                        direction=direction, unit="millimeter")


def _points_inside(field: DisplacementField, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random physical points (z, y, x) well inside the field's grid."""
    g = field.grid
    idx = rng.uniform(1, np.asarray(g.shape) - 2, (n, 3))
    return (g.frame_origin + idx * g.spacing) @ g.direction.T


def _itk_map(transform, points_zyx: np.ndarray) -> np.ndarray:
    """ITK's own TransformPoint, called point by point in x, y, z."""
    out = [list(transform.TransformPoint([float(v) for v in p[REV]])) for p in points_zyx]
    return np.asarray(out)[:, REV]


def _ants_points(points_zyx: np.ndarray, transformlist, whichtoinvert=None) -> np.ndarray:
    import ants
    import pandas as pd

    frame = pd.DataFrame(points_zyx[:, REV], columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, frame, transformlist, whichtoinvert=whichtoinvert)
    return out[["x", "y", "z"]].to_numpy()[:, REV]


# ---------------------------------------------------------------------------
# ANTs SyN outputs, against ANTs itself
# ---------------------------------------------------------------------------
def _uniform_in_bbox(path: Path, rng: np.random.Generator, n: int) -> np.ndarray:
    lo, hi = ngffreg.physical_bbox(ngffreg.open_image(path))
    return rng.uniform(lo, hi, (n, 3))


@pytest.mark.slow
def test_ants_forward_and_inverse_match_apply_transforms_to_points(ants_syn):
    rng = np.random.default_rng(0)
    fixed_pts = _uniform_in_bbox(ants_syn["fixed"], rng, 10_000)
    fwd = read_ants_transforms(ants_syn["fwdtransforms"])
    assert isinstance(fwd, Sequence)
    ours = fwd.apply(fixed_pts)
    theirs = _ants_points(fixed_pts, ants_syn["fwdtransforms"])
    assert np.abs(ours - theirs).max() < 1e-3
    # the SyN warp matters: ignoring it, or applying the list in the other order, fails
    assert np.abs(fwd.transforms[1].apply(fixed_pts) - theirs).max() > 0.5
    swapped = Sequence(transforms=fwd.transforms[::-1])
    assert np.abs(swapped.apply(fixed_pts) - theirs).max() > 0.1

    moving_pts = _uniform_in_bbox(ants_syn["moving"], rng, 10_000)
    inv = read_ants_transforms(ants_syn["invtransforms"], invert=[True, False])
    theirs = _ants_points(moving_pts, ants_syn["invtransforms"], whichtoinvert=[True, False])
    assert np.abs(inv.apply(moving_pts) - theirs).max() < 1e-3
    # the CLI entry reads the same list (ANTs' [path,1] syntax) to the same map
    specs = [f"[{ants_syn['invtransforms'][0]},1]", ants_syn["invtransforms"][1]]
    cli = load_transform_files(specs)
    assert cli.name == "registration"
    np.testing.assert_allclose(cli.apply(moving_pts[:500]), inv.apply(moving_pts[:500]),
                               atol=1e-9)


def _coordinate_images(ants_image):
    """Three ANTs images on ``ants_image``'s grid holding each voxel's physical x, y, z."""
    import ants

    shape = ants_image.shape
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    d = np.asarray(ants_image.direction, dtype=np.float64)
    phys = np.asarray(ants_image.origin)[:, None] + d @ (np.asarray(ants_image.spacing)[:, None]
                                                         * idx)
    images = [ants.from_numpy(phys[k].reshape(shape).astype(np.float32),
                              origin=ants_image.origin, spacing=ants_image.spacing,
                              direction=ants_image.direction) for k in range(3)]
    return images


def _voxel_centres_xyz(ants_image, step: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    sl = tuple(slice(0, n, step) for n in ants_image.shape)
    idx = np.stack(np.meshgrid(*[np.arange(n)[s] for n, s in zip(ants_image.shape, sl,
                                                                   strict=True)],
                               indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float64)
    d = np.asarray(ants_image.direction, dtype=np.float64)
    pts = np.asarray(ants_image.origin) + (idx * np.asarray(ants_image.spacing)) @ d.T
    return pts, sl


def _check_coordinate_warp(reference_path, source_path, transformlist, ours, whichtoinvert):
    """Warp coordinate images of ``source`` onto ``reference`` with ANTs; compare with our
    map at the reference voxel centres that land well inside the source grid."""
    import ants

    reference = ants.image_read(str(reference_path))
    source = ants.image_read(str(source_path))
    pts_xyz, sl = _voxel_centres_xyz(reference, step=3)
    mapped = ours.apply(pts_xyz[:, REV])[:, REV]
    warped = np.stack([
        ants.apply_transforms(fixed=reference, moving=img, transformlist=transformlist,
                              whichtoinvert=whichtoinvert, interpolator="linear")
        .numpy()[sl].reshape(-1)
        for img in _coordinate_images(source)], axis=1)
    d = np.asarray(source.direction, dtype=np.float64)
    cidx = ((mapped - np.asarray(source.origin)) @ d) / np.asarray(source.spacing)
    inside = np.all((cidx > 2) & (cidx < np.asarray(source.shape) - 3), axis=1)
    assert inside.mean() > 0.3
    return np.abs(warped[inside] - mapped[inside]).max()


@pytest.mark.slow
def test_ants_image_warping_uses_the_same_point_map(ants_syn):
    fwd = read_ants_transforms(ants_syn["fwdtransforms"])
    fwd = Sequence(transforms=(fwd.transforms[0].compute(), fwd.transforms[1]))
    err = _check_coordinate_warp(ants_syn["fixed"], ants_syn["moving"],
                                 ants_syn["fwdtransforms"], fwd, None)
    assert err < 1e-3
    inv = read_ants_transforms(ants_syn["invtransforms"], invert=[True, False])
    inv = Sequence(transforms=(inv.transforms[0], inv.transforms[1].compute()))
    err = _check_coordinate_warp(ants_syn["moving"], ants_syn["fixed"],
                                 ants_syn["invtransforms"], inv, [True, False])
    assert err < 1e-3


def test_read_ants_warp_keeps_its_grid(ants_syn):
    field = read_displacement_field(ants_syn["fwdtransforms"][0])
    assert field.shape == (182, 218, 182)
    assert field.spacing == (1.0, 1.0, 1.0)
    assert field.unit == "millimeter"
    # mni: ITK origin (-90, 126, -72) with direction diag(1, -1, 1): y runs downwards
    lo, hi = ngffreg.physical_bbox(field.field)
    np.testing.assert_allclose(lo, [-72, 126 - 217, -90])
    np.testing.assert_allclose(hi, [-72 + 181, 126, -90 + 181])
    # lazy: nothing is read until the field is evaluated
    assert hasattr(field.field.data, "dask")


# ---------------------------------------------------------------------------
# ITK transform files, against ITK itself
# ---------------------------------------------------------------------------
def _itk_transforms():
    center = [3.0, -4.0, 5.0]
    out = {}
    a = itk.AffineTransform[itk.D, 3].New()
    a.SetMatrix(itk.matrix_from_array(np.array([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2],
                                                [0.05, 0.0, 1.0]])))
    a.SetCenter(center)
    a.SetTranslation([4.0, 5.0, 6.0])
    out["AffineTransform"] = a
    e = itk.Euler3DTransform[itk.D].New()
    e.SetRotation(0.1, -0.2, 0.3)
    e.SetCenter(center)
    e.SetTranslation([1.0, 2.0, -3.0])
    out["Euler3DTransform"] = e
    v = itk.VersorRigid3DTransform[itk.D].New()
    v.SetRotation(_versor())
    v.SetCenter(center)
    v.SetTranslation([-2.0, 0.5, 1.0])
    out["VersorRigid3DTransform"] = v
    s = itk.Similarity3DTransform[itk.D].New()
    s.SetRotation(_versor())
    s.SetScale(1.3)
    s.SetCenter(center)
    s.SetTranslation([0.5, -1.0, 2.0])
    out["Similarity3DTransform"] = s
    sc = itk.ScaleTransform[itk.D, 3].New()
    sc.SetScale([1.2, 0.8, 1.5])
    sc.SetCenter(center)
    out["ScaleTransform"] = sc
    t = itk.TranslationTransform[itk.D, 3].New()
    t.SetOffset([7.0, -8.0, 9.0])
    out["TranslationTransform"] = t
    return out


def _versor():
    v = itk.Versor[itk.D]()
    axis = itk.Vector[itk.D, 3]()
    for i, value in enumerate((1.0, 2.0, 3.0)):
        axis[i] = value
    v.Set(axis, 0.4)
    return v


@pytest.mark.parametrize("suffix", [".txt", ".tfm", ".h5", ".mat"])
def test_itk_linear_types_match_itk(tmp_path, suffix):
    rng = np.random.default_rng(1)
    pts = rng.uniform(-50, 50, (200, 3))
    for name, t in _itk_transforms().items():
        path = tmp_path / f"{name}{suffix}"
        itk.transformwrite([t], str(path))
        ours = read_itk_transform(path)
        assert isinstance(ours, Affine), name
        err = np.abs(ours.apply(pts) - _itk_map(t, pts)).max()
        assert err < 1e-9, (name, err)


def _itk_parameters(values) -> object:
    out = itk.OptimizerParameters[itk.D](len(values))
    for i, v in enumerate(values):
        out[i] = float(v)
    return out


@pytest.mark.parametrize("suffix", [".txt", ".mat"])
def test_matrix_offset_transform_base(tmp_path, suffix):
    """Older ANTs writes MatrixOffsetTransformBase, which ITK's Python factory cannot
    create; it has AffineTransform's parameters, so ITK's affine is the reference."""
    from scipy import io as sio

    rng = np.random.default_rng(12)
    params = np.concatenate([(np.eye(3) + rng.normal(0, 0.1, (3, 3))).ravel(),
                             rng.normal(0, 5, 3)])
    center = rng.normal(0, 20, 3)
    path = tmp_path / f"mo{suffix}"
    name = "MatrixOffsetTransformBase_double_3_3"
    if suffix == ".txt":
        path.write_text(f"#Insight Transform File V1.0\n#Transform 0\nTransform: {name}\n"
                        f"Parameters: {' '.join(repr(float(v)) for v in params)}\n"
                        f"FixedParameters: {' '.join(repr(float(v)) for v in center)}\n")
    else:
        sio.savemat(str(path), {name: params.reshape(12, 1), "fixed": center.reshape(3, 1)},
                    format="4")
    reference = itk.AffineTransform[itk.D, 3].New()
    reference.SetFixedParameters(_itk_parameters(center))
    reference.SetParameters(_itk_parameters(params))
    pts = rng.uniform(-50, 50, (100, 3))
    ours = read_itk_transform(path)
    assert np.abs(ours.apply(pts) - _itk_map(reference, pts)).max() < 1e-9
    flat = path.with_name(f"mo2d{suffix}")
    if suffix == ".txt":
        flat.write_text(path.read_text().replace("_3_3", "_2_2"))
        with pytest.raises(TransformError, match="3-D transform"):
            read_itk_transform(flat)


def test_itk_composite_applies_last_added_first(tmp_path):
    rng = np.random.default_rng(2)
    transforms = _itk_transforms()
    composite = itk.CompositeTransform[itk.D, 3].New()
    composite.AddTransform(transforms["AffineTransform"])
    composite.AddTransform(transforms["Euler3DTransform"])
    path = tmp_path / "composite.h5"
    itk.transformwrite([composite], str(path))
    ours = read_itk_transform(path)
    assert isinstance(ours, Sequence) and len(ours.transforms) == 2
    pts = rng.uniform(-50, 50, (100, 3))
    assert np.abs(ours.apply(pts) - _itk_map(composite, pts)).max() < 1e-9
    # and the order matters for these two
    assert np.abs(Sequence(transforms=ours.transforms[::-1]).apply(pts)
                  - _itk_map(composite, pts)).max() > 0.1


@pytest.mark.parametrize("suffix", [".txt", ".tfm", ".h5", ".mat"])
def test_write_itk_linear_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(3)
    affine = _random_affine(rng)
    path = write_itk_transform(affine, tmp_path / f"affine{suffix}")
    back = read_itk_transform(path)
    tol = 1e-6 if suffix == ".mat" else 1e-9
    np.testing.assert_allclose(back.matrix, affine.matrix, atol=tol)
    # ITK reads our file to the same map
    pts = rng.uniform(-50, 50, (50, 3))
    np.testing.assert_allclose(_itk_map(itk.transformread(str(path))[0], pts),
                               affine.apply(pts), atol=1e-6)


def test_write_itk_composite_with_field_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    field = _smooth_field(rng)
    affine = _random_affine(rng, scale=0.02)
    seq = Sequence(transforms=(field, affine))
    path = write_itk_transform(seq, tmp_path / "seq.h5")
    pts = _points_inside(field, rng, 300)
    back = read_itk_transform(path)
    np.testing.assert_allclose(back.apply(pts), seq.apply(pts), atol=1e-9)
    # ITK itself applies the file as we do (field first, then the affine)
    composite = itk.transformread(str(path))[0]
    np.testing.assert_allclose(_itk_map(composite, pts), seq.apply(pts), atol=1e-9)
    with pytest.raises(TransformError, match=r"\.h5"):
        write_itk_transform(seq, tmp_path / "seq.txt")


# ---------------------------------------------------------------------------
# displacement-field images
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_displacement_field_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(5)
    angle = 0.3
    oblique = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                        [0, np.sin(angle), np.cos(angle)]])
    for direction in (None, np.diag([1.0, -1.0, 1.0]), oblique):
        field = _smooth_field(rng, direction=direction)
        path = write_displacement_field(field, tmp_path / f"field{suffix}")
        back = read_displacement_field(path)
        pts = _points_inside(field, rng, 500)
        err = np.abs(back.apply(pts) - field.apply(pts)).max()
        assert err < 1e-5, (suffix, direction, err)


def test_written_field_is_an_ants_warp(tmp_path):
    rng = np.random.default_rng(6)
    field = _smooth_field(rng, direction=np.diag([1.0, -1.0, 1.0]))
    path = write_displacement_field(field, tmp_path / "warp.nii.gz")
    pts = _points_inside(field, rng, 500)
    np.testing.assert_allclose(_ants_points(pts, [str(path)]), field.apply(pts), atol=1e-4)


# ---------------------------------------------------------------------------
# write_ants_transforms, against ANTs
# ---------------------------------------------------------------------------
def test_write_ants_transforms_field_and_affine(tmp_path):
    pytest.importorskip("ants")
    rng = np.random.default_rng(7)
    field = _smooth_field(rng, direction=np.diag([1.0, -1.0, 1.0]))
    affine = _random_affine(rng, scale=0.05)
    seq = Sequence(transforms=(field, affine))
    files = write_ants_transforms(seq, tmp_path / "reg_", like=field.field)
    assert [Path(f).name for f in files] == ["reg_1Warp.nii.gz", "reg_0GenericAffine.mat"]
    pts = _points_inside(field, rng, 1000)
    expected = seq.apply(pts)
    assert np.abs(_ants_points(pts, files) - expected).max() < 1e-3
    assert np.abs(read_ants_transforms(files).apply(pts) - expected).max() < 1e-4
    # ANTs' whichtoinvert on the affine: moving -> intermediate
    back = _ants_points(expected, [files[1]], whichtoinvert=[True])
    np.testing.assert_allclose(back, field.apply(pts), atol=1e-3)


def test_write_ants_transforms_samples_a_spline_on_like(tmp_path):
    pytest.importorskip("ants")
    rng = np.random.default_rng(8)
    like = ngffreg.make_image(np.zeros((30, 32, 34), np.float32), spacing=(2.0, 2.0, 2.0),
                              origin=(-30.0, -32.0, -34.0), unit="mm")
    src = rng.uniform(-25, 25, (12, 3))
    tps = ThinPlateSpline(source=src, target=src + rng.normal(0, 1.5, (12, 3)))
    affine = _random_affine(rng, scale=0.02)
    files = write_ants_transforms(Sequence(transforms=(tps, affine)), tmp_path / "tps_",
                                  like=like)
    pts = rng.uniform(-25, 25, (1000, 3))
    ours = read_ants_transforms(files).apply(pts)
    assert np.abs(_ants_points(pts, files) - ours).max() < 1e-3
    # sampling on a 2 mm grid keeps the spline to well under a voxel
    assert np.abs(ours - affine.apply(tps.apply(pts))).max() < 0.5
    with pytest.raises(TransformError, match="like="):
        write_ants_transforms(tps, tmp_path / "x_")


# ---------------------------------------------------------------------------
# c3d / greedy
# ---------------------------------------------------------------------------
def test_greedy_phantom_matrix_convention(data_dir, tmp_path):
    from scipy import ndimage

    folder = data_dir / "greedy"
    path = folder / "phantom01_rigid.mat"
    m = np.loadtxt(path)
    f = np.diag([-1.0, -1.0, 1.0, 1.0])
    true_xyz = np.linalg.inv(f @ m @ f)  # fixed -> moving, x, y, z (README)
    true_zyx = true_xyz[[2, 1, 0, 3]][:, [2, 1, 0, 3]]
    ours = read_c3d_matrix(path, maps="moving_to_fixed")
    np.testing.assert_allclose(ours.matrix, true_zyx, atol=1e-12)
    generating = read_c3d_matrix(path)  # taken as fixed -> moving
    np.testing.assert_allclose(generating.matrix, np.linalg.inv(true_zyx), atol=1e-12)

    fixed = ngffreg.open_image(folder / "phantom01_fixed.nii.gz")
    moving = ngffreg.open_image(folder / "phantom01_moving.nii.gz")
    assert ngffreg.spacing(moving) == (1.0, 1.0, 1.0) and ngffreg.origin(moving) == (0, 0, 0)
    fixed_values = np.asarray(fixed.values, dtype=np.float64)
    moving_values = np.asarray(moving.values, dtype=np.float64)
    idx = np.indices(fixed_values.shape).reshape(3, -1).T.astype(np.float64)
    pts = np.asarray(ngffreg.image.index_to_physical(fixed, idx))

    def mean_abs_difference(transform, source, reference) -> float:
        cidx = transform.apply(pts)  # both grids: spacing 1, origin 0, identity direction
        sampled = ndimage.map_coordinates(source, cidx.T, order=1, mode="nearest")
        return float(np.abs(sampled - reference.reshape(-1)).mean())

    # moving sampled at our fixed->moving points reproduces the fixed image (the moving
    # image is itself a linear resample, so sampling it again blurs a little: ~0.13)
    right = mean_abs_difference(ours, moving_values, fixed_values)
    wrong = mean_abs_difference(generating, moving_values, fixed_values)
    assert right < 0.3, right
    assert wrong > 2.0, wrong  # ~5.2 with the matrix taken the wrong way round
    # the README's check: fixed sampled at inverse(ours) = M_lps reproduces moving (~0.01)
    readme = mean_abs_difference(ours.inverse(), fixed_values, moving_values)
    assert readme < 0.02, readme

    # the CLI detects a c3d matrix in a .mat file and takes it as fixed -> moving
    np.testing.assert_allclose(load_transform_files([str(path)]).matrix, generating.matrix)
    np.testing.assert_allclose(load_transform_files([f"[{path},1]"]).matrix, ours.matrix,
                               atol=1e-12)


def test_c3d_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    affine = _random_affine(rng)
    for maps in ("fixed_to_moving", "moving_to_fixed"):
        path = write_c3d_matrix(affine, tmp_path / f"{maps}.mat", maps=maps)
        assert np.loadtxt(path).shape == (4, 4)
        np.testing.assert_allclose(read_c3d_matrix(path, maps=maps).matrix, affine.matrix,
                                   atol=1e-12)
    with pytest.raises(InputError, match="maps"):
        read_c3d_matrix(path, maps="forward")


# ---------------------------------------------------------------------------
# BigWarp
# ---------------------------------------------------------------------------
def test_bigwarp_affine_and_tps(tmp_path):
    rng = np.random.default_rng(10)
    truth = _random_affine(rng)
    fixed = rng.uniform(0, 100, (15, 3))
    moving = truth.apply(fixed)
    path = write_bigwarp_landmarks(tmp_path / "landmarks.csv", fixed, moving)
    first = path.read_text().splitlines()[0].split(",")
    assert first[:2] == ['"Pt-0"', '"true"']
    # moving point first, then fixed, each in x, y, z
    np.testing.assert_allclose([float(v.strip('"')) for v in first[2:]],
                               [*moving[0][REV], *fixed[0][REV]])
    f2, m2 = read_bigwarp_landmarks(path)
    np.testing.assert_allclose(f2, fixed)
    np.testing.assert_allclose(m2, moving)
    affine = bigwarp_transform(path, kind="affine")
    np.testing.assert_allclose(affine.matrix, truth.matrix, atol=1e-9)
    # a non-affine set: the spline is exact at the landmarks, the affine is not
    bent = moving + rng.normal(0, 2.0, moving.shape)
    write_bigwarp_landmarks(path, fixed, bent)
    tps = bigwarp_transform(path, kind="tps")
    assert isinstance(tps, ThinPlateSpline)
    np.testing.assert_allclose(tps.apply(fixed), bent, atol=1e-6)
    assert np.abs(bigwarp_transform(path).apply(fixed) - bent).max() > 0.5
    assert np.abs(load_transform_files([str(path)]).apply(fixed)
                  - bigwarp_transform(path).apply(fixed)).max() < 1e-9


def test_bigwarp_inactive_rows_and_id_column(tmp_path):
    rows = [
        '"Pt-0","true","1.0","2.0","3.0","10.0","20.0","30.0"',
        '"Pt-1","false","Infinity","Infinity","Infinity","5.0","5.0","5.0"',
        '"Pt-2","true","4.0","5.0","6.0","40.0","50.0","60.0"',
    ]
    path = tmp_path / "lm.csv"
    path.write_text("\n".join(rows) + "\n")
    fixed, moving = read_bigwarp_landmarks(path)
    np.testing.assert_allclose(fixed, [[30, 20, 10], [60, 50, 40]])
    np.testing.assert_allclose(moving, [[3, 2, 1], [6, 5, 4]])
    with_id = tmp_path / "lm9.csv"
    with_id.write_text('"Pt-0","true","0","1.0","2.0","3.0","10.0","20.0","30.0"\n')
    fixed, moving = read_bigwarp_landmarks(with_id)
    np.testing.assert_allclose(moving, [[3, 2, 1]])
    np.testing.assert_allclose(fixed, [[30, 20, 10]])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_2d_itk_transform_is_refused(tmp_path):
    t = itk.AffineTransform[itk.D, 2].New()
    path = tmp_path / "affine2d.txt"
    itk.transformwrite([t], str(path))
    with pytest.raises(TransformError, match="3-D transform"):
        read_itk_transform(path)
    with pytest.raises(TransformError, match="3-D transform"):
        load_transform_files([str(path)])


def test_two_component_vector_image_is_refused(tmp_path):
    image = itk.image_from_array(np.zeros((4, 5, 6, 2), np.float32), is_vector=True)
    path = tmp_path / "two.nrrd"
    itk.imwrite(image, str(path))
    with pytest.raises(TransformError, match=r"2 component.*needs 3"):
        read_displacement_field(path)


def test_missing_files(tmp_path):
    missing = tmp_path / "nope"
    for reader, name in [(read_itk_transform, "a.mat"), (read_displacement_field, "w.nii.gz"),
                         (read_c3d_matrix, "m.mat"), (read_bigwarp_landmarks, "l.csv")]:
        with pytest.raises(InputNotFoundError, match="Check the path"):
            reader(missing / name)
    with pytest.raises(InputNotFoundError, match="Check the path"):
        load_transform_files([f"[{missing / 'a.mat'},1]"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('"Pt-0","true","1","2","3"\n', "5 columns"),
        ('"Pt-0","true","1","2","3","4"\n', "2-D BigWarp"),
        ('"Pt-0","true","1","2","x","4","5","6"\n', "not a number"),
        ('"Pt-0","maybe","1","2","3","4","5","6"\n', "true/false"),
        ('"Pt-0","false","1","2","3","4","5","6"\n', "no active landmark"),
        ("", "no active landmark"),
    ],
)
def test_malformed_bigwarp_csv(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TransformError, match=match):
        read_bigwarp_landmarks(path)


def test_bad_transform_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a transform")
    with pytest.raises(TransformError, match="ITK cannot read"):
        read_itk_transform(junk)
    short = tmp_path / "short.mat"
    short.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(TransformError, match="4 lines of 4 numbers"):
        read_c3d_matrix(short)
    other = tmp_path / "landmarks.xyz"
    other.write_text("1 2 3\n")
    with pytest.raises(InputError, match="Cannot tell"):
        load_transform_files([str(other)])
    with pytest.raises(InputError, match=r"\[path,1\]"):
        load_transform_files([f"[{other}, 2]"])
    rng = np.random.default_rng(11)
    field_path = write_displacement_field(_smooth_field(rng), tmp_path / "w.nii.gz")
    with pytest.raises(TransformError, match="InverseWarp"):
        load_transform_files([f"[{field_path},1]"])
    with pytest.raises(TransformError, match="whichtoinvert"):
        read_ants_transforms([str(field_path)], invert=[False, True])
