"""A run killed with SIGKILL resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import summary_without_times

SETTINGS = [
    "--limit", "120", "--generations", "6", "--population", "4",
    "--float-steps", "60", "--baseline-steps", "30", "--finetune-steps", "2",
    "--test-draws", "2", "--selection-draws", "2", "--finalists", "2", "--quiet",
    "--seed", "3",
]


def _memdeploy(*args: str, **options) -> subprocess.Popen:
    command = [sys.executable, "-m", "memdeploy.cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def _finished_generations(run_dir: Path) -> int:
    path = run_dir / "history.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as handle:
        return len(list(csv.DictReader(handle)))


@pytest.mark.slow
def test_sigkill_at_random_generation_then_resume_matches(tmp_path):
    reference = tmp_path / "reference"
    assert _memdeploy("optimize", *SETTINGS, "--out", str(reference)).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    target = random.Random().randint(1, 5)
    process = _memdeploy("optimize", *SETTINGS, "--out", str(killed))
    deadline = time.monotonic() + 300
    while _finished_generations(killed) < target and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the target generation"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (killed / "summary.json").exists(), f"the run finished before generation {target}"

    resumed = _memdeploy("optimize", "--resume", str(killed), "--quiet")
    _, error = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, error.decode()

    expected = summary_without_times(reference / "summary.json")
    assert summary_without_times(killed / "summary.json") == expected
    assert _finished_generations(killed) == 7
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")]


def test_resume_before_first_generation_starts_ga_afresh(tmp_path):
    from memdeploy.cli import main

    run_dir = tmp_path / "early"
    assert main(["optimize", *SETTINGS, "--generations", "1", "--out", str(run_dir)]) == 0
    expected = summary_without_times(run_dir / "summary.json")
    for name in ("checkpoint.npz", "history.csv", "candidates.csv", "summary.json"):
        os.remove(run_dir / name)
    assert main(["optimize", "--resume", str(run_dir), "--quiet"]) == 0
    assert summary_without_times(run_dir / "summary.json") == expected
