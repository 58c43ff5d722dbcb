"""The `export` and `deploy` subcommands: weight maps for a physical array.

`build_parser` in `memdeploy.cli` registers them with `_add_export` and
`_add_deploy`, like its other subcommands.
"""

from __future__ import annotations

import json

from memdeploy.cli import non_negative_int, positive_int


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run's weights as a weight map for an array's tiles",
        description="Quantize a run's weights to a device profile's levels, place them "
        "on its tiles as differential cell pairs and write a map folder: manifest.json, "
        "map.safetensors and one CSV per tile.",
    )
    parser.add_argument("run_dir", help="run folder written by `memdeploy optimize`")
    parser.add_argument("--out", required=True, help="map folder to create")
    parser.add_argument(
        "--profile", help="profile name or path of the array (default: the run's)"
    )
    parser.add_argument(
        "--weights",
        default="best",
        help="best, baseline, or a weights file (default best)",
    )
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> int:
    from memdeploy.weightmap import export_map

    weight_map = export_map(
        args.run_dir, args.out, profile=args.profile, weights=args.weights
    )
    manifest = weight_map.manifest
    tile = manifest["tile"]
    print(
        f"map folder: {args.out} ({weight_map.cells['tile'].size} cell pairs on "
        f"{manifest['tiles_used']} tiles of {tile['rows']}x{tile['cols']} cells, "
        f"profile {manifest['profile']['name']}, weights hash "
        f"{manifest['model']['weights_sha256'][:16]})"
    )
    return 0


def _add_deploy(subparsers) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="program a weight map onto an array and verify it by read-back",
        description="Program a map folder's cells with write-verify through the serial "
        "array protocol, read them back, and write verify.json, the read-back map "
        "(readback/) and pictures (pictures/) into the map folder. An interrupted "
        "deploy resumes where it stopped when run again.",
    )
    parser.add_argument("map_dir", help="map folder written by `memdeploy export`")
    parser.add_argument(
        "--backend",
        required=True,
        help="serial://PORT?options, e.g. serial:///dev/ttyUSB0?baudrate=921600",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore the deploy journal and program every block again",
    )
    parser.add_argument(
        "--reads",
        type=positive_int,
        default=4,
        help="reads averaged per cell for the read-back (default 4)",
    )
    parser.add_argument(
        "--repair-rounds",
        type=non_negative_int,
        default=3,
        help="times cells out of tolerance are programmed again (default 3)",
    )
    parser.add_argument(
        "--tile-pictures",
        type=non_negative_int,
        default=32,
        help="tiles to draw heat maps of, the first ones (default 32)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run_deploy)


def _run_deploy(args) -> int:
    from memdeploy.weightmap import deploy_map

    report = deploy_map(
        args.map_dir,
        args.backend,
        restart=args.restart,
        reads=args.reads,
        repair_rounds=args.repair_rounds,
        tile_pictures=args.tile_pictures,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['within_tolerance']} of {report['cells']} cells within "
        f"{report['tolerance_us']:g} µS on {report['device_id']}: {report['stuck']} "
        f"stuck, {report['unverified']} free cells out of tolerance, max error "
        f"{report['max_error_us']:.3g} µS ({report['max_error_free_us']:.3g} µS on "
        f"free cells), {report['pulses']} pulses"
    )
    print(f"report: {args.map_dir}/verify.json, read-back map: {args.map_dir}/readback")
    return 0
