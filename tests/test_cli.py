"""The command line end to end on small runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from memdeploy.cli import main
from tests.conftest import summary_without_times

SMALL = [
    "--limit", "120", "--generations", "2", "--population", "4",
    "--float-steps", "60", "--baseline-steps", "30", "--finetune-steps", "2",
    "--test-draws", "3", "--selection-draws", "2", "--finalists", "2", "--quiet",
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    assert main(["optimize", *SMALL, "--out", str(run_dir)]) == 0
    return run_dir


def test_optimize_writes_every_run_file(small_run):
    expected = {
        "manifest.json", "history.csv", "candidates.csv", "summary.json",
        "best.safetensors", "best.pt", "baseline.safetensors", "float.safetensors",
        "fitness.png", "checkpoint.npz",
    }
    assert expected <= {path.name for path in small_run.iterdir()}
    assert not [path for path in small_run.iterdir() if path.name.startswith(".")]


def test_summary_names_split_seed_and_draws(small_run):
    summary = json.loads((small_run / "summary.json").read_text())
    for name in ("float", "baseline", "best"):
        assert 0.0 <= summary[name]["test_accuracy"] <= 1.0
        assert 0.0 <= summary[name]["validation_accuracy"] <= 1.0
    assert summary["best"]["test_draws"] == 3
    assert len(summary["best"]["test_accuracies"]) == 3
    assert summary["seed"] == 0


def test_manifest_records_settings_versions_and_profile(small_run):
    manifest = json.loads((small_run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["settings"]["population"] == 4
    assert manifest["backend"] == "gaussian"
    assert manifest["profile"]["content"]["weights"]["bits"] == 2
    assert len(manifest["profile"]["sha256"]) == 64
    assert manifest["versions"]["torch"].startswith("2.")
    assert manifest["dataset"]


def test_history_has_a_row_per_generation(small_run):
    lines = (small_run / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["generation", "best_fitness", "mean_fitness", "min_fitness", "elapsed_s"]
    assert "cells_programmed" in header
    assert len(lines) == 1 + 3


def test_best_weights_load_both_ways(small_run):
    from_torch = torch.load(small_run / "best.pt", weights_only=True)
    from_safetensors = load_file(str(small_run / "best.safetensors"))
    assert from_torch.keys() == from_safetensors.keys()
    for name in from_torch:
        assert torch.equal(from_torch[name], from_safetensors[name])


def test_fitness_plot_is_a_png(small_run):
    assert (small_run / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_json_reports_test_accuracy(small_run, capsys):
    assert main(["evaluate", str(small_run), "--json", "--draws", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["draws"] == 2
    assert result["split"] == "test"


def test_evaluate_on_another_profile(small_run, capsys):
    assert main(["evaluate", str(small_run), "--json", "--profile", "rram-generic",
                 "--draws", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "rram-generic"


def test_same_seed_gives_same_summary(small_run, tmp_path):
    again = tmp_path / "again"
    assert main(["optimize", *SMALL, "--out", str(again)]) == 0
    first = summary_without_times(small_run / "summary.json")
    assert summary_without_times(again / "summary.json") == first
    assert np.array_equal(
        load_file(str(small_run / "best.safetensors"))["1.weight"],
        load_file(str(again / "best.safetensors"))["1.weight"],
    )


def test_existing_run_folder_is_not_overwritten(small_run, capsys):
    assert main(["optimize", *SMALL, "--out", str(small_run)]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused(small_run, capsys):
    assert main(["optimize", "--resume", str(small_run), "--population", "8"]) == 1
    error = capsys.readouterr().err
    assert "population: run has 4, given 8" in error
    assert "Traceback" not in error


def test_resume_of_finished_run_reproduces_summary(small_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_run, copy)
    (copy / "summary.json").unlink()
    assert main(["optimize", "--resume", str(copy), "--quiet"]) == 0
    first = summary_without_times(small_run / "summary.json")
    assert summary_without_times(copy / "summary.json") == first


def test_bad_profile_gives_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\nname = "bad"\n[tile]\nrows = 0\n')
    code = main(["optimize", *SMALL, "--profile", str(bad), "--out", str(tmp_path / "r")])
    error = capsys.readouterr().err
    assert code == 1
    assert "tile.rows: found 0" in error
    assert "Traceback" not in error


def test_invalid_setting_names_value(tmp_path, capsys):
    code = main(["optimize", *SMALL, "--mutation-probability", "1.5",
                 "--out", str(tmp_path / "r")])
    assert code == 1
    assert "mutation_probability=1.5" in capsys.readouterr().err


def test_profiles_validate_reports_each_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\nname = "bad"\nextra = 1\n')
    assert main(["profiles", "validate", "pcm-ibm", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "pcm-ibm: valid" in captured.out
    assert "extra: found 1: no such field" in captured.err


def test_profiles_show_prints_json(capsys):
    assert main(["profiles", "show", "lab-array-32x32"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tile"] == {"rows": 32, "cols": 32}


def test_backends_lists_each_with_state(capsys):
    assert main(["backends"]) == 0
    output = capsys.readouterr().out
    assert "gaussian   available" in output
