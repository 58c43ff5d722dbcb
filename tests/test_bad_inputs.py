"""Bad input everywhere memdeploy reads, and the error each one must give.

Every kind of input a user hands memdeploy is tried here in its broken forms: device
profiles, command-line settings, backend specs and serial URLs, run folders, weight
files, datasets, user model factories and weight maps. Each must raise memdeploy's
own error type (or exit with status 1 or 2 on the command line) with a message that
names the file or field, and must leave nothing half-written. tools/bad_inputs.py
runs the same kinds of input through the `memdeploy` command and prints a table.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import shutil
import socket
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backends import CrossbarLayer, open_backend
from backends.serial_client import ArrayClient
from backends.serial_commands import Command, DeviceInfo, Status
from backends.serial_errors import MalformedReplyError, SerialLinkError
from backends.serial_link import SerialLink
from backends.serial_protocol import Frame, encode_frame
from backends.serial_transfers import ProgramReply
from memdeploy.cli import main
from memdeploy.datasets import load_dataset
from memdeploy.datasets.cifar import CIFAR_LAYOUTS, read_python_batch
from memdeploy.datasets.idx import parse_idx, read_idx
from memdeploy.datasets.mnist_json import read_digit_file
from memdeploy.errors import (
    BackendSpecError,
    DatasetError,
    ModelSpecError,
    ProfileError,
    RunFolderError,
    WeightsError,
)
from memdeploy.manifest import check_resume_settings
from memdeploy.models import build_model
from memdeploy.profiles import MAX_PROFILE_BYTES, load_profile, profile_from_dict
from memdeploy.runfolder import (
    atomic_write_text,
    load_checkpoint,
    load_weights,
    read_csv,
    remove_stale_temporaries,
    save_weights,
)
from memdeploy.weightmap import load_map
from memdeploy.weightmap.format import WeightMapError, read_map

TINY_RUN = [
    "--limit", "60", "--generations", "1", "--population", "2",
    "--float-steps", "5", "--baseline-steps", "5", "--finetune-steps", "0",
    "--test-draws", "1", "--selection-draws", "1", "--finalists", "1", "--quiet",
]  # fmt: skip

VALID_PROFILE = 'schema_version = 1\nname = "bad"\n'


def run_cli(argv, capsys) -> tuple[int, str]:
    """Run `memdeploy` in-process; return the exit status and stderr."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    return code, capsys.readouterr().err


def write_profile(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished tiny run on the Gaussian backend, never modified by tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    assert main(["optimize", *TINY_RUN, "--out", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    """A copy of the tiny run that a test may damage."""
    return Path(shutil.copytree(small_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def small_map(small_run, tmp_path_factory) -> Path:
    """A weight map exported from the tiny run."""
    map_dir = tmp_path_factory.mktemp("maps") / "map"
    code = main(["export", str(small_run), "--out", str(map_dir),
                 "--profile", "lab-array-32x32"])  # fmt: skip
    assert code == 0
    return map_dir


@pytest.fixture
def map_copy(small_map, tmp_path) -> Path:
    return Path(shutil.copytree(small_map, tmp_path / "map"))


# Device profiles -----------------------------------------------------------------

BAD_PROFILES = [
    ("nan", "[weights]\nprogramming_noise = nan\n",
     r"weights\.programming_noise: found nan: Input should be a finite number"),
    ("infinity", "[drift]\nt0_s = inf\n",
     r"drift\.t0_s: found inf: Input should be a finite number"),
    ("string for integer", '[weights]\nbits = "3"\n',
     r"weights\.bits: found '3': Input should be a valid integer"),
    ("float for integer", "[weights]\nbits = 3.0\n",
     r"weights\.bits: found 3\.0: Input should be a valid integer"),
    ("huge tile", "[tile]\nrows = 100000000000000000000\n",
     r"tile\.rows: found 100000000000000000000: .*less than or equal to 65535"),
    ("zero tile", "[tile]\ncols = 0\n",
     r"tile\.cols: found 0: .*greater than or equal to 1"),
    ("negative noise", "[weights]\nread_noise = -0.1\n",
     r"weights\.read_noise: found -0\.1: .*greater than or equal to 0"),
    ("probability above 1", "[faults]\nstuck_rate = 2.0\n",
     r"faults\.stuck_rate: found 2\.0: .*less than or equal to 1"),
    ("inverted window", "[conductance]\ng_min_us = 10.0\ng_max_us = 5.0\n",
     r"conductance\.g_max_us \(5\.0\) must be greater than conductance\.g_min_us"),
    ("unknown key", "[weights]\nbitz = 3\n",
     r"weights\.bitz: found 3: no such field"),
    ("section of wrong type", "weights = 3\n",
     r"weights: found 3: Input should be a valid dictionary"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [case[1:] for case in BAD_PROFILES],
    ids=[case[0] for case in BAD_PROFILES],
)
def test_bad_profile_field_is_named_with_value(tmp_path, body, message):
    path = write_profile(tmp_path, VALID_PROFILE + body)

    with pytest.raises(ProfileError, match=message) as caught:
        load_profile(path)

    assert str(path) in str(caught.value)
    assert "profiles show" in str(caught.value)


def test_inverted_window_message_omits_whole_profile(tmp_path):
    path = write_profile(
        tmp_path, VALID_PROFILE + "[conductance]\ng_min_us = 10.0\ng_max_us = 5.0\n"
    )

    with pytest.raises(ProfileError) as caught:
        load_profile(path)

    assert "schema_version': 1" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("schema_version = 2\nname = 'x'\n", "schema_version 2 is not supported"),
        ("schema_version = true\nname = 'x'\n", "schema_version: found True"),
        ("schema_version = '1'\nname = 'x'\n", "schema_version: found '1'"),
        ("", r"schema_version: this field is required"),
        ("a = [1,\n", r"invalid TOML: .*line|invalid TOML: .*end of document"),
        ("a = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
    ],
    ids=["newer version", "bool version", "string version", "empty", "syntax", "deep"],
)
def test_malformed_profile_file_is_rejected(tmp_path, text, message):
    path = write_profile(tmp_path, text)

    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_binary_profile_is_rejected(tmp_path):
    path = tmp_path / "junk.toml"
    path.write_bytes(bytes(range(128, 256)) * 4)

    with pytest.raises(ProfileError, match="not a UTF-8 text file"):
        load_profile(path)


def test_profile_path_that_is_folder_is_rejected(tmp_path):
    (tmp_path / "folder.toml").mkdir()

    with pytest.raises(ProfileError, match=r"folder\.toml is a folder, expected"):
        load_profile(tmp_path / "folder.toml")


def test_oversized_profile_is_rejected(tmp_path):
    path = write_profile(tmp_path, VALID_PROFILE + "# x\n" * (MAX_PROFILE_BYTES // 4))

    with pytest.raises(ProfileError, match=f"at most {MAX_PROFILE_BYTES} bytes"):
        load_profile(path)


def test_profile_with_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID_PROFILE.encode())

    assert load_profile(path).name == "bad"


def test_profile_that_is_not_table_is_rejected():
    with pytest.raises(ProfileError, match="found list"):
        profile_from_dict([1, 2], source="inline")


def test_profiles_validate_reports_bad_files_without_traceback(tmp_path, capsys):
    bad = write_profile(tmp_path, VALID_PROFILE + "[weights]\nbits = nan\n")
    good = write_profile(tmp_path, VALID_PROFILE, name="good.toml")

    code, err = run_cli(["profiles", "validate", bad, good], capsys)

    assert code == 1
    assert f"{bad}: invalid device profile" in err
    assert "Traceback" not in err


# Settings and command-line options -----------------------------------------------

BAD_FLAGS = [
    (["--population", "-3"], 1, r"population=-3 \(--population\): .*greater than or equal to 2"),
    (["--mutation-probability", "2"], 1, r"mutation_probability=2\.0 .*less than or equal to 1"),
    (["--generations", "-1"], 1, r"generations=-1 .*greater than or equal to 0"),
    (["--elitism", "4", "--population", "4"], 1, "elitism 4 must be smaller than the population 4"),
    (["--crossover-probability", "nan"], 1, r"crossover_probability=nan .*finite number"),
    (["--mutation-noise", "inf"], 1, r"mutation_noise=inf .*finite number"),
    (["--sigmoid-steepness", "1e309"], 1, r"sigmoid_steepness=inf .*finite number"),
    (["--inference-times", "-1"], 1, r"inference_times_s\.0=-1\.0 \(--inference-times\)"),
    (["--seed", "-1"], 1, r"seed=-1 .*greater than or equal to 0"),
    (["--limit", "0"], 1, r"limit=0 .*greater than or equal to 1"),
    (["--dataset", "nosuch"], 1, "unknown dataset 'nosuch'"),
    (["--model", "nosuch"], 1, "model 'nosuch' is neither a known model"),
    (["--backend", "???"], 1, r"invalid backend spec '\?\?\?'"),
    (["--backend", "nosuch"], 1, "unknown backend 'nosuch': known backends are"),
    (["--backend", "serial://"], 1, "names no port"),
    (["--backend", "gaussian?a=1&&b"], 1, "invalid options"),
    (["--profile", "nosuch"], 1, "profile 'nosuch' not found"),
    (["--population", "abc"], 2, "invalid int value: 'abc'"),
    (["--fitness-split", "test"], 2, "invalid choice: 'test'"),
    (["--fitness-draws", "0"], 1, r"fitness_draws=0 .*greater than or equal to 1"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], 1, "/nonexistent/mnist"),
    (["--backend", "serial:///dev/memdeploy-no-such-port"], 1, "memdeploy-no-such-port"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "status", "message"),
    BAD_FLAGS,
    ids=[" ".join(case[0]) for case in BAD_FLAGS],
)
def test_bad_optimize_flag_fails_before_run_folder(
    tmp_path, capsys, flags, status, message
):
    out = tmp_path / "run"

    code, err = run_cli(["optimize", *flags, "--out", out, "--quiet"], capsys)

    assert code == status
    assert "Traceback" not in err
    assert err.count("\n") <= 4 or status == 2
    assert re.search(message, err), err
    assert not out.exists()


def test_environment_backend_is_used_and_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEMDEPLOY_BACKEND", "nosuch")
    out = tmp_path / "run"

    code, err = run_cli(["optimize", "--out", out, "--quiet"], capsys)

    assert code == 1
    assert "unknown backend 'nosuch'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--draws", "0"], "expected an integer of 1 or more, got 0"),
        (["--draws", "-1"], "expected an integer of 1 or more, got -1"),
        (["--seed", "-5"], "expected an integer of 0 or more, got -5"),
    ],
)
def test_bad_evaluate_flag_is_usage_error(small_run, capsys, argv, message):
    code, err = run_cli(["evaluate", small_run, *argv], capsys)

    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--reads", "0"), ("--repair-rounds", "-1"), ("--tile-pictures", "-2")],
)
def test_bad_deploy_flag_is_usage_error(small_map, capsys, flag, value):
    code, err = run_cli(
        ["deploy", small_map, "--backend", "serial://loop://", flag, value], capsys
    )

    assert code == 2
    assert f"argument {flag}" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--tiles", "0"), ("--tiles", "70000"), ("--corrupt-rate", "2"),
     ("--drop-rate", "nan"), ("--delay-s", "-1"), ("--reset-after-frames", "-1"),
     ("--port", "70000")],
)  # fmt: skip
def test_bad_emulate_flag_is_usage_error(capsys, flag, value):
    code, err = run_cli(
        ["emulate", "--profile", "lab-array-32x32", flag, value], capsys
    )

    assert code == 2
    assert f"argument {flag}: expected" in err


# Backend specs, serial URLs and backend options ----------------------------------

BAD_SERIAL_OPTIONS = [
    ("timeout=-1", "timeout='-1' is invalid: expected a finite number above 0"),
    ("timeout=nan", "timeout='nan' is invalid"),
    ("retries=-1", "retries='-1' is invalid: expected an integer of 0 or more"),
    ("baudrate=0", "baudrate='0' is invalid: expected an integer of 1 or more"),
    ("max_pulses=70000", "max_pulses='70000' is invalid: expected an integer from 1 to 65535"),
    ("tolerance_us=inf", "tolerance_us='inf' is invalid"),
    ("t_inference_s=0", "t_inference_s='0' is invalid"),
    ("mode=fast", "mode='fast' is invalid: expected onchip or readback"),
    ("parity=X", "parity='X' is invalid: expected N, E or O"),
    ("delta=2", "delta='2' is invalid: expected 0 or 1"),
    ("foo=1", r"does not take option\(s\) foo"),
]  # fmt: skip


@pytest.mark.parametrize(("query", "message"), BAD_SERIAL_OPTIONS)
def test_bad_serial_option_is_rejected_before_port_opens(query, message):
    with pytest.raises(BackendSpecError, match=message):
        open_backend(f"serial://loop://?{query}", "lab-array-32x32")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_inference_time_rejected_at_open(value):
    with pytest.raises(BackendSpecError, match=f"t_inference_s='{value}' is invalid"):
        open_backend(f"gaussian?t_inference_s={value}", "paper-protonet-mnist")


def test_unknown_gaussian_option_is_rejected():
    with pytest.raises(BackendSpecError, match=r"does not take option\(s\) foo"):
        open_backend("gaussian?foo=1", "paper-protonet-mnist")


def test_serial_url_of_unknown_scheme_is_rejected():
    with pytest.raises(SerialLinkError, match="cannot open serial port 'nosuch://x'"):
        open_backend("serial://nosuch://x", "lab-array-32x32")


def test_serial_url_of_closed_socket_is_rejected():
    # A port this test bound and released, so nothing listens on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(SerialLinkError, match="Connection refused|cannot open serial"):
        open_backend(f"serial://socket://127.0.0.1:{port}", "lab-array-32x32")


def test_serial_url_of_missing_device_is_rejected(tmp_path):
    with pytest.raises(SerialLinkError, match="No such file or directory"):
        open_backend(f"serial://{tmp_path / 'ttyNONE'}", "lab-array-32x32")


# Replies from a device that passes CRC checks but states nonsense -----------------


class ScriptedPort:
    """A port double that replies to every request with one scripted frame."""

    def __init__(self, make_reply) -> None:
        self.timeout = 0.0
        self._make_reply = make_reply
        self._pending = b""

    def write(self, data: bytes) -> int:
        request = data.rstrip(b"\x00").split(b"\x00")[-1]
        from cobs import cobs

        body = cobs.decode(request)
        command, _, seq = struct.unpack_from("<BBH", body)
        self._pending += encode_frame(self._make_reply(command, seq))
        return len(data)

    def read(self, size: int) -> bytes:
        data, self._pending = self._pending[:size], self._pending[size:]
        return data


def hello_reply(**changes):
    fields = dict(
        major=1, minor=0, max_payload=4096, tiles=8, rows=32, cols=32, levels=8,
        g_min_us=8.0, g_max_us=90.0, v_read_v=0.2, boot_id=1, device_id="fake",
        firmware="1",
    ) | changes  # fmt: skip
    payload = DeviceInfo(**fields).encode()
    return lambda command, seq: Frame(command | 0x80, Status.OK, seq, payload)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_payload": 0}, "max_payload 0, expected 64 to 4096 bytes"),
        ({"tiles": 0}, "0 tiles of 32x32 cells"),
        ({"cols": 1}, "1 tiles|32x1 cells"),
        ({"g_min_us": 50.0, "g_max_us": 10.0}, "conductance range 50.0 to 10.0"),
        ({"g_max_us": float("nan")}, "conductance range 8.0 to nan"),
        ({"v_read_v": -1.0}, "read voltage -1.0 V"),
    ],
)
def test_absurd_device_description_is_rejected(changes, message):
    link = SerialLink(ScriptedPort(hello_reply(**changes)), timeout_s=0.5, retries=0,
                      name="fake")  # fmt: skip

    with pytest.raises(MalformedReplyError, match=message):
        ArrayClient(link).hello()


def test_reply_with_unknown_status_names_status():
    port = ScriptedPort(lambda command, seq: Frame(command | 0x80, 0x7E, seq))
    link = SerialLink(port, timeout_s=0.5, retries=0, name="fake")

    with pytest.raises(SerialLinkError, match=r"an unknown status \(0x7E\)") as caught:
        link.request(Command.STATUS)

    assert caught.value.status == 0x7E


def test_malformed_status_payload_is_rejected():
    port = ScriptedPort(lambda command, seq: Frame(command | 0x80, 0, seq, b"\x01\x02"))
    link = SerialLink(port, timeout_s=0.5, retries=0, name="fake")

    with pytest.raises(MalformedReplyError, match="STATUS reply payload has 2 bytes"):
        ArrayClient(link).status()


# Run folders -----------------------------------------------------------------------


def edit_manifest(run_dir: Path, edit) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    edit(manifest)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").unlink(), "manifest.json not found"),
        (lambda d: (d / "manifest.json").write_text('{"settings": '), "is not valid JSON"),
        (lambda d: (d / "manifest.json").write_text("[1]"), "expected a JSON object, found list"),
        (lambda d: edit_manifest(d, lambda m: m.pop("settings")), "'settings' is missing"),
        (lambda d: edit_manifest(d, lambda m: m.update(settings=[1])), "'settings' is list"),
        (lambda d: edit_manifest(d, lambda m: m["settings"].update(population="x")),
         r"records settings this memdeploy rejects .*population='x'"),
        (lambda d: edit_manifest(d, lambda m: m["settings"].update(bogus=1)),
         "bogus=1: no such setting"),
    ],
    ids=["missing", "truncated", "list", "no settings", "settings list", "bad value", "extra"],
)  # fmt: skip
def test_damaged_manifest_stops_resume(run_copy, damage, message):
    damage(run_copy)

    with pytest.raises(RunFolderError, match=message):
        check_resume_settings(run_copy, None, {})


def save_arrays(path: Path, **changes) -> None:
    arrays = {name: value.copy() for name, value in np.load(path).items()}
    arrays.update(changes)
    for name in [name for name, value in changes.items() if value is None]:
        arrays.pop(name)
    np.savez(path, **arrays)


CHECKPOINT_DAMAGE = [
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:500]), "not a readable checkpoint"),
    ("empty", lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    ("junk", lambda p: p.write_bytes(os.urandom(3000)), r"not a readable checkpoint \(not an NPZ archive\)"),
    ("single array", lambda p: p.write_bytes(npy_bytes()), "a single array, not an NPZ archive"),
    ("missing array", lambda p: save_arrays(p, fitness=None), "lacks the array 'fitness'"),
    ("generation vector", lambda p: save_arrays(p, generation=np.arange(3)), "'generation' is int64 of shape \\(3,\\)"),
    ("negative generation", lambda p: save_arrays(p, generation=np.array(-1)), "generation number of 0 or more"),
    ("short rng keys", lambda p: save_arrays(p, numpy_keys=np.zeros(5, np.uint32)), "'numpy_keys' .* 624 uint32 words"),
    ("rng words too large", lambda p: save_arrays(p, python_state=np.full(625, 2**40)), "'python_state'"),
    ("nan genes", lambda p: save_arrays(p, population=np.full((2, 3), np.nan, np.float32)), "'population' .* finite genes"),
]  # fmt: skip


def npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("damage", "message"),
    [case[1:] for case in CHECKPOINT_DAMAGE],
    ids=[case[0] for case in CHECKPOINT_DAMAGE],
)
def test_damaged_checkpoint_is_rejected(run_copy, damage, message):
    path = run_copy / "checkpoint.npz"
    damage(path)

    with pytest.raises(RunFolderError, match=message) as caught:
        load_checkpoint(path)

    assert "allow_pickle" not in str(caught.value)


def test_resume_with_truncated_checkpoint_fails_cleanly(run_copy, capsys):
    path = run_copy / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:200])

    code, err = run_cli(["optimize", "--resume", run_copy, "--quiet"], capsys)

    assert code == 1
    assert "Traceback" not in err
    assert "checkpoint.npz: not a readable checkpoint" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo,bar\n1,2\n", r"history\.csv line 2: column 'generation' is None"),
        (
            "generation,best_fitness,mean_fitness,min_fitness,elapsed_s\n0,1,1,1,abc\n",
            r"history\.csv line 2: column 'elapsed_s' is 'abc', expected a number",
        ),
    ],
    ids=["no generation column", "text in a number column"],
)
def test_damaged_history_is_named(run_copy, text, message):
    (run_copy / "history.csv").write_text(text)

    with pytest.raises(RunFolderError, match=message):
        read_csv(run_copy / "history.csv")


def test_stale_temporaries_of_run_files_only_are_removed(tmp_path):
    (tmp_path / ".history.csv.k2j3h").write_text("partial")
    (tmp_path / ".notes.txt").write_text("the user's own file")

    removed = remove_stale_temporaries(tmp_path)

    assert removed == [tmp_path / ".history.csv.k2j3h"]
    assert (tmp_path / ".notes.txt").exists()


def test_written_file_is_readable_by_group_and_others(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)

    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["best.safetensors", "best.pt"])
def test_weight_file_is_readable_by_group_and_others(tmp_path, name):
    old = os.umask(0o022)
    try:
        save_weights(tmp_path / name, {"fc.weight": torch.zeros(2, 3)})
    finally:
        os.umask(old)

    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


# Weight files ----------------------------------------------------------------------


class PickleBomb:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def torch_file_with_pickle(payload: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is replaced by `payload`."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = payload
            target.writestr(item, data)
    return output.getvalue()


@pytest.mark.parametrize("form", ["torch zip", "raw pickle"])
def test_pickle_bomb_weights_are_not_executed(tmp_path, form):
    marker = tmp_path / "executed"
    payload = pickle.dumps({"0.weight": PickleBomb(marker)}, protocol=2)
    path = tmp_path / "best.pt"
    path.write_bytes(
        torch_file_with_pickle(payload) if form == "torch zip" else payload
    )

    with pytest.raises(RunFolderError, match="best.pt") as caught:
        load_weights(path)

    assert not marker.exists()
    assert "weights_only=False" not in str(caught.value)


def test_pickle_bomb_checkpoint_is_not_executed_by_evaluate(run_copy, tmp_path, capsys):
    marker = tmp_path / "executed"
    bomb = tmp_path / "best.pt"
    bomb.write_bytes(
        torch_file_with_pickle(pickle.dumps(PickleBomb(marker), protocol=2))
    )

    code, err = run_cli(
        ["evaluate", run_copy, "--weights", bomb, "--draws", "1"], capsys
    )

    assert code == 1
    assert not marker.exists()
    assert "unpickling it could run code" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "cannot read weights"),
        (os.urandom(200), "cannot read weights"),
        (b"\x08\x00\x00\x00\x00\x00\x00\x00{}", "cannot read weights"),
    ],
    ids=["empty", "junk", "bad header"],
)
def test_junk_safetensors_is_rejected(tmp_path, content, message):
    path = tmp_path / "best.safetensors"
    path.write_bytes(content)

    with pytest.raises(RunFolderError, match=message):
        load_weights(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_file_with_non_finite_values_names_tensor(tmp_path, value):
    path = tmp_path / "float.safetensors"
    weight = torch.zeros(4, 4)
    weight[1, 2] = value
    save_file({"1.weight": weight, "1.bias": torch.zeros(4)}, str(path))

    with pytest.raises(WeightsError, match=r"tensor '1\.weight' has 1 NaN or infinite"):
        load_weights(path)


def test_checkpoint_flag_with_nan_weights_is_rejected(tmp_path, capsys):
    path = tmp_path / "nan.safetensors"
    save_file({"1.weight": torch.full((64, 64), float("nan"))}, str(path))
    out = tmp_path / "run"

    code, err = run_cli(
        ["optimize", *TINY_RUN, "--checkpoint", path, "--out", out], capsys
    )

    assert code == 1
    assert "tensor '1.weight'" in err


# NaN and infinite weights reach no array --------------------------------------------


@pytest.mark.parametrize("backend", ["gaussian", "aihwkit"])
def test_non_finite_weights_are_rejected_before_programming(backend):
    from backends import backend_class

    if backend_class(backend).unavailable_reason() is not None:
        pytest.skip(backend_class(backend).unavailable_reason())
    layer = CrossbarLayer("fc", "linear", (4, 8))
    weight = torch.zeros(4, 8)
    weight[0, 0] = float("nan")
    with open_backend(backend, "paper-protonet-mnist") as opened:
        opened.setup([layer])

        with pytest.raises(WeightsError, match="layer 'fc'"):
            opened.program({"fc": weight})


def test_non_finite_weights_never_reach_serial_array():
    from backends.emulator import start_emulator

    layers = [
        CrossbarLayer("fc1", "linear", (4, 8)),
        CrossbarLayer("fc2", "linear", (2, 4)),
    ]
    weights = {"fc1": torch.zeros(4, 8), "fc2": torch.full((2, 4), float("inf"))}
    with start_emulator("lab-array-32x32", transport="pty") as emulator:
        with open_backend(f"serial://{emulator.url}", "lab-array-32x32") as opened:
            opened.setup(layers)

            with pytest.raises(WeightsError, match="layer 'fc2'"):
                opened.program(weights)

        assert emulator.device.physics.pulses_total == 0


# Datasets ----------------------------------------------------------------------------


def idx_bytes(dims, data: bytes, code: int = 0x08) -> bytes:
    return (
        bytes([0, 0, code, len(dims)])
        + b"".join(struct.pack(">I", d) for d in dims)
        + data
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an IDX file: .*empty file"),
        (b"\x12\x34\x08\x01" + bytes(8), "not an IDX file: .*found 12340801"),
        (idx_bytes([100], bytes(50)), r"has 58 bytes, expected 108 for shape \(100,\)"),
        (idx_bytes([2**32 - 1] * 3, b""), "expected more than 2\\*\\*63"),
        (idx_bytes([1] * 255, b""), "for shape of 255 dimensions"),
        (b"\x00\x00\x07\x01" + bytes(8), "type code 0x07"),
        (b"\x00\x00\x08\x03" + bytes(4), "truncated: 8 bytes, expected a header of 16"),
    ],
    ids=["empty", "magic", "truncated", "huge dims", "255 dims", "type code", "header"],
)
def test_malformed_idx_is_rejected(content, message):
    with pytest.raises(DatasetError, match=message):
        parse_idx(content, "images.idx")


def test_truncated_gzip_idx_is_rejected(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    compressed = gzip.compress(idx_bytes([10, 28, 28], os.urandom(7840)))
    path.write_bytes(compressed[: len(compressed) // 2])

    with pytest.raises(DatasetError, match="cannot read IDX file .*train-images"):
        read_idx(path, ndim=3)


def write_idx_set(folder: Path, train_side: int = 28, test_side: int = 28) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    count = 20
    labels = (np.arange(count) % 10).astype(np.uint8).tobytes()
    for prefix, side in (("train", train_side), ("t10k", test_side)):
        images = bytes(count * side * side)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes([count, side, side], images)
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes([count], labels))
    return folder


def test_idx_sets_of_different_image_shapes_are_rejected(tmp_path):
    folder = write_idx_set(tmp_path / "mnist", test_side=14)

    with pytest.raises(
        DatasetError,
        match=r"train images have shape \(28, 28\) and the t10k images \(14, 14\)",
    ):
        load_dataset("mnist", folder)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"data": [0.5] * 783}, "has 783 values in 'data', expected"),
        ({"data": [[0.5] * 784]}, "expected a non-empty flat list"),
        ({"data": ["a"] * 784}, "non-numeric values in 'data'"),
        ({"data": [True] * 784}, "values of type bool in 'data', expected numbers"),
        ({"data": [None] * 784}, "values of type object in 'data'"),
        (
            {"data": [2.0] * 784},
            r"values from 2\.0 to 2\.0, expected grey values in \[0, 1\]",
        ),
        (
            {"data": [10**400] * 784},
            "non-numeric values in 'data'|values of type object",
        ),
        ([1, 2, 3], "contains list, expected an object with a 'data' list"),
        ({"pixels": []}, r"contains keys \['pixels'\]"),
    ],
    ids=[
        "length",
        "nested",
        "strings",
        "bools",
        "nulls",
        "range",
        "huge ints",
        "list",
        "keys",
    ],
)
def test_malformed_mnist_json_is_rejected(tmp_path, document, message):
    path = tmp_path / "3.json"
    path.write_text(json.dumps(document))

    with pytest.raises(DatasetError, match=message) as caught:
        read_digit_file(path)

    assert "3.json" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"data": [' + ",".join(["NaN"] * 784) + "]}", "784 NaN values in 'data'"),
        ('{"data": [0.5, ', "cannot read MNIST JSON file"),
        ("[" * 100_000, "nested too deeply"),
    ],
    ids=["nan", "truncated", "deep"],
)
def test_malformed_mnist_json_text_is_rejected(tmp_path, text, message):
    path = tmp_path / "3.json"
    path.write_text(text)

    with pytest.raises(DatasetError, match=message):
        read_digit_file(path)


def test_cifar_pickle_with_malicious_reduce_is_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": PickleBomb(marker)}))

    with pytest.raises(
        DatasetError, match=r"references posix\.system|references os\.system"
    ):
        read_python_batch(path, CIFAR_LAYOUTS["cifar10"])

    assert not marker.exists()


# User model factories ---------------------------------------------------------------

FACTORIES = """
import torch

def raises(image_shape, num_classes):
    raise RuntimeError("out of ideas")

def returns_int(image_shape, num_classes):
    return 3

def no_arguments():
    return torch.nn.Linear(2, 2)

def no_parameters(image_shape, num_classes):
    return torch.nn.ReLU()
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "user_factories.py").write_text(FACTORIES)
    (tmp_path / "broken_module.py").write_text("raise ValueError('import failed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:factory", "module 'nosuchmodule' cannot be imported"),
        ("os:system", r"must accept \(image_shape, num_classes\), but its signature is \(command\)"),
        ("os:path", "os has no callable named 'path'"),
        ("user_factories:raises", "failed with RuntimeError: out of ideas"),
        ("user_factories:returns_int", "returned int, expected a torch.nn.Module"),
        ("user_factories:no_arguments", r"signature is \(\)"),
        ("user_factories:no_parameters", "without parameters"),
        ("broken_module:factory", "importing module 'broken_module' failed with ValueError"),
        ("nosuch", "neither a known model"),
    ],
)  # fmt: skip
def test_bad_model_factory_is_rejected(factories, spec, message):
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec, (1, 8, 8), 10)


def test_os_system_factory_is_not_called(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))

    with pytest.raises(ModelSpecError):
        build_model("os:system", (1, 8, 8), 10)

    assert calls == []


# Weight maps ------------------------------------------------------------------------


def edit_map_manifest(map_dir: Path, edit) -> None:
    path = map_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


MAP_DAMAGE = [
    ("truncated array", lambda d: (d / "map.safetensors").write_bytes((d / "map.safetensors").read_bytes()[:999]), "(truncated)"),
    ("missing array", lambda d: (d / "map.safetensors").unlink(), "map.safetensors not found"),
    ("missing manifest", lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
    ("junk manifest", lambda d: (d / "manifest.json").write_text("{junk"), "is not valid JSON"),
    ("wrong hash", lambda d: edit_map_manifest(d, lambda m: m["files"]["map.safetensors"].update(sha256="0" * 64)), "differs from 0000000000000000"),
    ("files list", lambda d: edit_map_manifest(d, lambda m: m.update(files=[1])), "files: found \\[1\\]"),
    ("no hash", lambda d: edit_map_manifest(d, lambda m: m["files"]["map.safetensors"].pop("sha256")), "files.map.safetensors.sha256: missing"),
    ("scale string", lambda d: edit_map_manifest(d, lambda m: m["layers"][0].update(scale="x")), "layers.0.scale: found 'x'"),
    ("scale nan", lambda d: edit_map_manifest(d, lambda m: m["layers"][0].update(scale=float("nan"))), "layers.0.scale: found nan"),
    ("dtype", lambda d: edit_map_manifest(d, lambda m: m["layers"][0].update(dtype="os")), "layers.0.dtype: found 'os'"),
    ("image shape", lambda d: edit_map_manifest(d, lambda m: m["dataset"].update(image_shape=[1, 10**6, 8])), "dataset.image_shape.1"),
    ("profile edited", lambda d: edit_map_manifest(d, lambda m: m["profile"]["content"]["weights"].update(bits=2)), "the manifest was edited"),
    ("profile invalid", lambda d: edit_map_manifest(d, lambda m: m["profile"]["content"].update(schema_version=9)), "embedded profile is invalid"),
    ("newer schema", lambda d: edit_map_manifest(d, lambda m: m.update(schema_version=2)), "schema_version 2 is not supported"),
    ("kind", lambda d: edit_map_manifest(d, lambda m: m.update(kind="weird")), "kind: found 'weird'"),
    ("weights hash", lambda d: edit_map_manifest(d, lambda m: m["model"].update(weights_sha256="1" * 64)), "belong to different models"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "message"),
    [case[1:] for case in MAP_DAMAGE],
    ids=[case[0] for case in MAP_DAMAGE],
)
def test_damaged_weight_map_is_rejected(map_copy, damage, message):
    damage(map_copy)

    with pytest.raises(WeightMapError, match=message):
        load_map(map_copy)


def rehash_array(map_dir: Path) -> None:
    import hashlib

    data = (map_dir / "map.safetensors").read_bytes()
    edit_map_manifest(
        map_dir,
        lambda m: m["files"]["map.safetensors"].update(
            sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)
        ),
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("row", 10_000, "cells.row ranges .* expected 0 to 31"),
        ("weight_index", -5, "cells.weight_index ranges -5"),
        ("level", float("nan"), "cells.level contains NaN"),
        ("layer", 7, "cells.layer ranges .* expected 0 to 1"),
    ],
)
def test_cell_table_out_of_range_is_rejected(map_copy, field, value, message):
    from safetensors.torch import load_file

    tensors = load_file(str(map_copy / "map.safetensors"))
    tensors[f"cells.{field}"][0] = value
    save_file(tensors, str(map_copy / "map.safetensors"))
    rehash_array(map_copy)

    with pytest.raises(WeightMapError, match=message):
        read_map(map_copy)


def test_junk_array_file_is_rejected_even_when_rehashed(map_copy):
    (map_copy / "map.safetensors").write_bytes(os.urandom(1000))
    rehash_array(map_copy)

    with pytest.raises(WeightMapError, match="not a readable safetensors file"):
        read_map(map_copy)


def test_evaluate_of_damaged_map_fails_without_traceback(map_copy, capsys):
    edit_map_manifest(map_copy, lambda m: m.update(layers="abc"))

    code, err = run_cli(["evaluate", map_copy, "--draws", "1"], capsys)

    assert code == 1
    assert "Traceback" not in err
    assert "layers: found 'abc'" in err


# Frames with a valid CRC but absurd fields, sent to the emulated device ------------


@pytest.fixture
def device():
    from backends.emulator.device import EmulatedDevice
    from backends.emulator.physics import ArrayPhysics

    physics = ArrayPhysics(load_profile("lab-array-32x32"), tiles=2, seed=0)
    emulated = EmulatedDevice(physics, device_id="bad-input")
    emulated.handle(Frame(Command.SELECT_TILE, 0, 1, struct.pack("<H", 0)))
    return emulated


def reply_to(device, command: int, payload: bytes) -> Frame:
    from backends.serial_protocol import FrameDecoder

    (reply,) = FrameDecoder().feed(device.handle(Frame(command, 0, 7, payload)))
    return reply


@pytest.mark.parametrize(
    ("command", "payload", "status"),
    [
        (0x7F, b"", Status.UNKNOWN_COMMAND),
        (Command.PROGRAM, struct.pack("<BBHfH", 0, 0, 30, 2.0, 65535), Status.BAD_LENGTH),
        (Command.PROGRAM, struct.pack("<BBHfH", 0, 0, 0, 2.0, 0), Status.BAD_VALUE),
        (Command.PROGRAM, struct.pack("<BBHfH", 0, 0, 30, float("nan"), 0), Status.BAD_VALUE),
        (Command.PROGRAM, struct.pack("<BBHfH", 0, 0, 30, 2.0, 1) + struct.pack("<HHf", 0, 0, float("inf")), Status.BAD_VALUE),
        (Command.PROGRAM, struct.pack("<BBHfH", 0, 0, 30, 2.0, 1) + struct.pack("<HHf", 9999, 0, 40.0), Status.BAD_ADDRESS),
        (Command.READ, struct.pack("<HHHH", 0, 0, 65535, 65535), Status.BAD_ADDRESS),
        (Command.READ, struct.pack("<HHHH", 0, 0, 0, 0), Status.BAD_ADDRESS),
        (Command.READ, b"\x00" * 3, Status.BAD_LENGTH),
        (Command.MVM, struct.pack("<HHHHH", 0, 4, 0, 4, 65535), Status.BAD_LENGTH),
        (Command.MVM, struct.pack("<HHHHH", 0, 1, 0, 1, 1) + struct.pack("<f", 9.0), Status.BAD_VALUE),
        (Command.SELECT_TILE, struct.pack("<H", 65535), Status.BAD_ADDRESS),
        (Command.RESET, b"\x01", Status.BAD_LENGTH),
        (Command.HELLO, bytes([9, 0]), Status.VERSION_MISMATCH),
    ],
    ids=["unknown command", "count beyond payload", "zero pulses", "nan tolerance",
         "infinite target", "row outside tile", "huge rectangle", "empty rectangle",
         "short rectangle", "batch beyond payload", "voltage beyond read", "tile 65535",
         "reset with payload", "newer major version"],
)  # fmt: skip
def test_absurd_request_gets_status_not_fault(device, command, payload, status):
    reply = reply_to(device, command, payload)

    assert reply.status == status
    assert device.physics.pulses_total == 0


@pytest.mark.slow
def test_program_of_65535_pulses_saturates_rounds(device):
    request = struct.pack("<BBHfH", 0, 0, 65535, 1e-30, 1) + struct.pack(
        "<HHf", 3, 3, 40.0
    )

    reply = reply_to(device, Command.PROGRAM, request)

    assert reply.status == Status.OK
    assert ProgramReply.decode(reply.payload).rounds == 0xFFFF


@pytest.mark.parametrize(
    "content",
    ["{junk", "[]", '{"journal_version": 1, "identity": [], "blocks": {}}',
     '{"journal_version": 1, "identity": {}, "blocks": {"b": {"tile": "0"}}}'],
    ids=["junk", "list", "identity list", "block without counts"],
)  # fmt: skip
def test_damaged_deploy_journal_asks_for_restart(tmp_path, content):
    from memdeploy.weightmap.journal import JOURNAL_FILE, DeployJournal

    (tmp_path / JOURNAL_FILE).write_text(content)

    with pytest.raises(WeightMapError, match="rerun with --restart"):
        DeployJournal.open(tmp_path, {"weights_sha256": "x"}, restart=False)
