"""The `export` and `deploy` subcommands, built into a parser as `memdeploy.cli` does."""

from __future__ import annotations

import argparse
import json

import pytest

from backends.emulator import start_emulator
from memdeploy.cli_deploy import _add_deploy, _add_export
from memdeploy.errors import BackendSpecError


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="memdeploy")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_export(subparsers)
    _add_deploy(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def run_folder(tmp_path):
    from tests.weightmap.conftest import write_run

    return write_run(tmp_path / "run")


def test_export_then_deploy_writes_outputs(tmp_path, run_folder, capsys):
    map_dir = tmp_path / "map"
    assert (
        run_command(
            [
                "export",
                str(run_folder),
                "--profile",
                "lab-array-32x32",
                "--out",
                str(map_dir),
            ]
        )
        == 0
    )
    assert "1280 cell pairs on 3 tiles of 32x32 cells" in capsys.readouterr().out

    with start_emulator("lab-array-32x32", tiles=3, transport="pty") as emulator:
        status = run_command(
            [
                "deploy",
                str(map_dir),
                "--backend",
                f"serial://{emulator.url}",
                "--tile-pictures",
                "0",
                "--json",
            ]
        )
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cells"] == 2560
    assert (map_dir / "verify.json").is_file()
    assert (map_dir / "readback" / "manifest.json").is_file()
    assert (map_dir / "pictures" / "scatter.png").is_file()


def test_deploy_prints_a_summary_line(tmp_path, run_folder, capsys):
    map_dir = tmp_path / "map"
    run_command(["export", str(run_folder), "--out", str(map_dir)])
    with start_emulator("lab-array-32x32", tiles=3, transport="pty") as emulator:
        run_command(
            [
                "deploy",
                str(map_dir),
                "--backend",
                f"serial://{emulator.url}",
                "--tile-pictures",
                "0",
            ]
        )
    out = capsys.readouterr().out
    assert "of 2560 cells within 2 µS on emulator:lab-array-32x32:seed0" in out
    assert f"report: {map_dir}/verify.json" in out


def test_deploy_to_gaussian_raises_domain_error(tmp_path, run_folder):
    map_dir = tmp_path / "map"
    run_command(["export", str(run_folder), "--out", str(map_dir)])
    with pytest.raises(BackendSpecError, match="only the serial backend"):
        run_command(["deploy", str(map_dir), "--backend", "gaussian"])
