"""The ``ngffreg`` command line: a thin face over the functional API.

Exit status: 0 on success, 2 on bad input or an output that cannot be written (with a
message that says what to do), 1 on an unexpected internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import NgffregError


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--voxel-size",
        nargs=3,
        type=float,
        metavar=("Z", "Y", "X"),
        help="voxel size in z, y, x order (required where the file has none, e.g. plain TIFF)",
    )
    p.add_argument("--unit", help="length unit of --voxel-size, e.g. micrometer (um), millimeter")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ngffreg",
        description="Chunked registration of very large 3-D volumes on OME-NGFF.",
    )
    parser.add_argument("--version", action="version", version=f"ngffreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conv = sub.add_parser(
        "convert",
        help="convert a volume to an OME-Zarr pyramid",
        description="Convert TIFF, NIfTI, NRRD, MHA, N5, Zarr or OME-Zarr into an OME-Zarr "
        "pyramid that places every voxel at its physical position.",
    )
    conv.add_argument("input", type=Path, help="input file or folder")
    conv.add_argument("output", type=Path, help="output store, e.g. OUT.ome.zarr")
    _add_input_options(conv)
    conv.add_argument(
        "--chunks", type=int, default=128, metavar="N", help="chunk edge (default 128)"
    )
    conv.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="K",
        help="chunks per shard along each axis (OME-Zarr 0.5/0.6 only)",
    )
    conv.add_argument("--ngff-version", choices=("0.4", "0.5", "0.6"), default="0.5")
    conv.add_argument(
        "--levels",
        type=int,
        default=None,
        metavar="L",
        help="number of pyramid levels (default: until the volume is small)",
    )
    conv.add_argument(
        "--method",
        choices=("mean", "gaussian", "nearest"),
        default="mean",
        help="anti-aliasing of the pyramid; 'nearest' for label images",
    )
    conv.add_argument(
        "--input-level", type=int, default=0, help="level to read from a pyramid input"
    )
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    conv.add_argument("--quiet", action="store_true", help="no progress bar")

    info = sub.add_parser("info", help="describe a volume: shape, spacing, origin, levels, chunks")
    info.add_argument("path", type=Path)
    _add_input_options(info)
    info.add_argument("--json", action="store_true", help="print JSON")

    tp = sub.add_parser(
        "transform-points",
        help="map physical points through a registration's transforms",
        description="Map the z,y,x points of a CSV file (physical units) from fixed to moving "
        "space (or back with --inverse). TRANSFORM is an ngffreg output store (its "
        "'registration' transform) or ITK/ANTs transform files in ANTs order, as "
        "ants.registration returns them in fwdtransforms (points go through the first file "
        "first; write [FILE,1] to invert a linear one): affine .mat/.txt/.tfm, composite "
        ".h5, displacement-field images (.nii.gz, .nrrd, .mha), c3d/greedy 4x4 matrices, "
        "BigWarp landmark .csv.",
    )
    tp.add_argument("transform", nargs="+", metavar="TRANSFORM")
    tp.add_argument("--points", type=Path, required=True, metavar="IN.csv",
                    help="CSV with a header holding columns z,y,x; other columns are kept")
    tp.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.csv")
    tp.add_argument("--inverse", action="store_true",
                    help="map moving-space points to fixed space instead")

    mp = sub.add_parser(
        "map-points",
        help="map points between any two coordinate systems of an OME-Zarr 0.6 store",
        description="Map COORDS_JSON (a JSON list of points, each in SOURCE's axis order and "
        "unit) from the coordinate system SOURCE of STORE to TARGET, along the store's "
        "transformations (walked backwards where they can be inverted), and print "
        '{"coordinates": [...]} as JSON. On failure prints {"message": ...} and exits 1, or '
        "3 when a transformation type on the way is not supported. This is the calling "
        "convention of the NGFF conformance runner oztc "
        "(ome-zarr-transformations-conformance): oztc CASES -- ngffreg map-points.",
    )
    mp.add_argument("store", type=Path, metavar="STORE")
    mp.add_argument("source", metavar="SOURCE", help="coordinate-system name (or path:name)")
    mp.add_argument("target", metavar="TARGET", help="coordinate-system name (or path:name)")
    mp.add_argument("coordinates", metavar="COORDS_JSON",
                    help='e.g. "[[1,2,3],[4,5,6]]"; @FILE reads the JSON from FILE')

    wp = sub.add_parser(
        "warp",
        help="resample a moving volume onto a fixed grid through a registration",
        description="Warp MOVING onto the grid of --like FIXED through the fixed→moving "
        "transform (an ngffreg output store, or ITK/ANTs transform files in ANTs order as "
        "in transform-points), lazily and chunk by chunk, into an OME-Zarr 0.6 pyramid with "
        "the transform stored beside it.",
    )
    wp.add_argument("moving", type=Path, help="moving volume (any format open_image reads)")
    wp.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.ome.zarr")
    wp.add_argument("--like", type=Path, required=True, metavar="FIXED",
                    help="the fixed volume whose grid the output takes")
    wp.add_argument("--transform", nargs="+", required=True, metavar="TRANSFORM",
                    help="an output store, or transform files in ANTs order")
    wp.add_argument("--interpolator", choices=("linear", "nearestNeighbor", "bSpline"),
                    default="linear", help="nearestNeighbor for label images")
    wp.add_argument("--fill-value", type=float, default=0.0,
                    help="value where the moving image has no data (default 0)")
    wp.add_argument("--pyramid", choices=("downsample", "per-level"), default="downsample",
                    help="coarser levels by downsampling warped level 0 (default), or each "
                    "warped from the moving level whose spacing fits")
    wp.add_argument("--chunks", type=int, default=128, metavar="N")
    wp.add_argument("--levels", type=int, default=None, metavar="L")
    wp.add_argument("--moving-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"))
    wp.add_argument("--fixed-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"))
    wp.add_argument("--unit", help="length unit of the --*-voxel-size options")
    wp.add_argument("--overwrite", action="store_true")
    wp.add_argument("--quiet", action="store_true", help="no progress bar")

    _add_register_parser(sub)

    demo = sub.add_parser(
        "demo", help="register a built-in synthetic pair with a known deformation",
        description="Generate a synthetic pair with a known deformation, register it with "
        "the full pipeline (coarse, blocks, blend, warp), write the output store and print "
        "the target registration error against the truth.")
    demo.add_argument("--output", type=Path, default=Path("demo-output"))
    demo.add_argument("--workers", type=int, default=2, help="block processes (default 2)")

    qc = sub.add_parser(
        "qc", help="render the QC report of a registration output",
        description="Render (or refresh) the QC report of OUT.ome.zarr into OUT.ome.zarr/qc/: "
        "before/after overlays and checkerboards on three orthogonal planes, the per-block "
        "correlation gain over the block grid, the Jacobian determinant of the fine field, "
        "and index.html gathering them with the summary and the block table. The inputs are "
        "re-opened from the paths recorded at registration unless given here.")
    qc.add_argument("store", type=Path, metavar="OUT.ome.zarr")
    qc.add_argument("--fixed", type=Path, metavar="PATH",
                    help="the fixed image (default: the path recorded by register)")
    qc.add_argument("--moving", type=Path, metavar="PATH",
                    help="the moving image (default: the path recorded by register)")
    return parser


def _add_register_parser(sub) -> None:
    rp = sub.add_parser(
        "register", help="register MOVING to FIXED: coarse, blocks, blend, warp",
        description="Register MOVING to FIXED (any format the readers take): a coarse "
        "whole-volume registration at a pyramid level, fine registrations on overlapping "
        "blocks, blended into one field; writes OUT.ome.zarr with the registered image, the "
        "fixed→moving transform (NGFF 0.6), ANTs transform files and a QC table.")
    rp.add_argument("fixed", type=Path)
    rp.add_argument("moving", type=Path)
    rp.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.ome.zarr")
    rp.add_argument("--config", type=Path, metavar="FILE.yaml",
                    help="YAML file with the same keys as the options (e.g. chunk_size: 64); "
                    "options given on the command line win")
    from .registration.options import CLI_OPTIONS, cli_name

    for key, (_, help_text) in CLI_OPTIONS.items():
        rp.add_argument("--" + cli_name(key).replace("_", "-"), dest=key, default=None,
                        help=help_text)
    rp.add_argument("--fixed-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"))
    rp.add_argument("--moving-voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"))
    rp.add_argument("--unit", help="length unit of the --*-voxel-size options")
    rp.add_argument("--overwrite", action="store_true")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")


def _convert(args: argparse.Namespace) -> int:
    from .info import describe_path, format_info
    from .io.read import open_image
    from .io.write import to_ome_zarr

    image = open_image(
        args.input, voxel_size=args.voxel_size, unit=args.unit, level=args.input_level
    )
    start = time.perf_counter()
    out = to_ome_zarr(
        image,
        args.output,
        version=args.ngff_version,
        chunks=args.chunks,
        chunks_per_shard=args.shards,
        n_levels=args.levels,
        method=args.method,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    print(format_info(describe_path(out)))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .info import describe_path, format_info

    info = describe_path(args.path, voxel_size=args.voxel_size, unit=args.unit)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def load_transform(specs: list[str]):
    """The transform named on the command line: one output store, or transform files."""
    from .errors import InputError

    first = Path(specs[0])
    if len(specs) == 1 and first.is_dir():
        from .transforms.ngff import read_registration

        return read_registration(first)
    stores = [s for s in specs if Path(s.strip("[]").split(",")[0]).is_dir()]
    if stores:
        raise InputError(
            f"{stores[0]} is a folder (an output store?); give either one output store or a "
            "list of transform files, not both.")
    from .transforms.files import load_transform_files

    return load_transform_files(specs)


def _transform_points(args: argparse.Namespace) -> int:
    from .transforms.points import read_points_csv, write_points_csv

    points, table = read_points_csv(args.points)
    transform = load_transform(args.transform)
    start = time.perf_counter()
    if args.inverse:
        mapped, residual = transform.apply_inverse(points, return_residual=True)
        bad = int((residual > 1e-3).sum())
        if bad:
            warnings.warn(
                f"{bad} of {len(points)} points did not converge through the inverse "
                f"(largest residual {residual.max():.3g}); they may lie outside the field or "
                "in a fold.", stacklevel=1)
    else:
        mapped = transform.apply(points)
    write_points_csv(args.output, mapped, table)
    way = "moving → fixed" if args.inverse else "fixed → moving"
    print(f"mapped {len(points)} points ({way}) in {time.perf_counter() - start:.2f} s "
          f"to {args.output}")
    return 0


def _map_points(args: argparse.Namespace) -> int:
    """``map-points``: JSON in, JSON out on stdout, errors as JSON too (oztc reads them)."""
    import json

    from .transforms.graph import UnsupportedTransform, map_points

    try:
        text = args.coordinates
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        coords = json.loads(text)
        if isinstance(coords, dict):
            coords = coords.get("coordinates")
        out = map_points(args.store, args.source, args.target, coords)
    except UnsupportedTransform as exc:
        print(json.dumps({"message": f"unsupported: {exc}"}))
        return 3
    except (NgffregError, OSError, ValueError, TypeError) as exc:
        print(json.dumps({"message": str(exc)}))
        return 1
    print(json.dumps({"coordinates": out.tolist()}))
    return 0


def _warp(args: argparse.Namespace) -> int:
    from .io.read import open_image, open_levels
    from .warp import write_warped

    moving = open_levels(args.moving, voxel_size=args.moving_voxel_size, unit=args.unit)
    fixed = open_image(args.like, voxel_size=args.fixed_voxel_size, unit=args.unit)
    transform = load_transform(args.transform)
    start = time.perf_counter()
    out, report = write_warped(
        moving, transform, args.output, like=fixed, interpolator=args.interpolator,
        fill_value=args.fill_value, chunks=args.chunks, n_levels=args.levels,
        pyramid=args.pyramid, overwrite=args.overwrite, progress=not args.quiet)
    for row in report:
        print(f"level {row['level']}: {row['reason']}")
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, workers=args.workers)
    return 0


def _qc(args: argparse.Namespace) -> int:
    from .errors import InputNotFoundError
    from .qc import write_report

    for role in ("fixed", "moving"):
        path = getattr(args, role)
        if path is not None and not path.exists():
            raise InputNotFoundError(f"--{role} {path}: no such file or folder.")
    print(write_report(args.store, fixed=args.fixed, moving=args.moving))
    return 0


def register_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`ngffreg.register` from ``--config`` and options (the
    options win), typed by :class:`~ngffreg.registration.options.RegistrationOptions`."""
    from .errors import InputError
    from .registration.options import CLI_OPTIONS, RegistrationOptions, cli_name

    options: dict = {}
    if args.config is not None:
        import yaml

        if not args.config.is_file():
            raise InputError(f"--config {args.config}: no such file.")
        try:
            doc = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"--config {args.config} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise InputError(f"--config {args.config} must hold a mapping of option: value.")
        options.update(RegistrationOptions.from_text(doc, f"--config {args.config}"))
    for key in CLI_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            where = "--" + cli_name(key).replace("_", "-")
            options[key] = RegistrationOptions.parse(key, value, where)
    return options


class BlockProgress:
    """A progress bar over blocks on stderr: blocks done / total, the rate and an estimate
    of the time left (from the blocks finished since the first, so start-up is not counted
    as block time); redrawn in place on a terminal, else a line every ``every`` seconds and
    at the end. Flagged blocks are named as they finish."""

    def __init__(self, stream=None, every: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.done = 0
        self.flagged = 0
        self.start = time.perf_counter()
        self.first: float | None = None
        self.every = every
        self.shown = -every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, rec: dict) -> None:
        now = time.perf_counter()
        self.done += 1
        self.first = self.first or now
        total = rec.get("of")
        status = rec.get("status")
        if status in ("failed", "rejected"):
            self.flagged += 1
            self._line(f"block {rec['id']} {status}: {rec.get('message', '')}")
        if not self.tty and total != self.done and now - self.shown < self.every:
            return
        self.shown = now
        text = self.text(total, now)
        if self.tty:
            print("\r" + text, end="", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)

    def text(self, total: int | None, now: float) -> str:
        """The progress line: bar, count, elapsed, rate and time left."""
        bar = ""
        if total:
            filled = int(30 * self.done / total)
            bar = f"[{'#' * filled}{' ' * (30 - filled)}] {self.done}/{total} "
        text = f"blocks {bar or f'{self.done} '}{now - self.start:.0f} s"
        if self.first is not None and self.done > 1 and now > self.first:
            rate = (self.done - 1) / (now - self.first)
            text += f", {rate * 60:.1f} blocks/min"
            if total and total > self.done:
                text += f", about {_duration((total - self.done) / rate)} left"
        return text + (f", {self.flagged} flagged" if self.flagged else "")

    def _line(self, text: str) -> None:
        print(("\r" if self.tty else "") + text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.done:
            print(file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    """``seconds`` as people read a wait: 45 s, 12 min, 2 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def _register(args: argparse.Namespace) -> int:
    from .registration.register import register

    options = register_options(args)
    start = time.perf_counter()

    progress = None if args.quiet else BlockProgress()
    result = register(args.fixed, args.moving, args.output,
                      fixed_voxel_size=args.fixed_voxel_size,
                      moving_voxel_size=args.moving_voxel_size, unit=args.unit,
                      overwrite=args.overwrite, progress=progress, **options)
    if progress is not None:
        progress.close()
    m = result.coarse.metrics
    print(f"coarse (level {result.coarse.fixed_level}): ncc {m['ncc_before']:.3f} → "
          f"{m['ncc_after']:.3f} in {m['seconds']:.1f} s")
    flagged = [r["id"] for r in result.blocks if r["status"] in ("failed", "rejected")]
    if flagged:
        print(f"flagged blocks (filled from neighbours): {flagged}; see qc/blocks.csv")
    print(f"wrote {result.output} in {time.perf_counter() - start:.1f} s")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, UserWarning):
        print(f"ngffreg: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ngffreg`` console script."""
    args = _parser().parse_args(argv)
    handlers = {
        "convert": _convert, "info": _info, "demo": _demo,
        "transform-points": _transform_points, "map-points": _map_points, "warp": _warp,
        "register": _register,
        "qc": _qc,
    }
    try:
        with warnings.catch_warnings():  # restores the process's warning display after
            warnings.showwarning = _show_warning
            return handlers[args.command](args)
    except NgffregError as exc:
        print(f"ngffreg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ("; finished blocks are kept in OUT.ome.zarr.partial: run the same command "
                "again to resume" if args.command == "register" else
                "; no partial output was kept")
        print(f"ngffreg {args.command}: interrupted{kept}.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
