"""The `memdeploy` command line.

Subcommands are built by small functions that tests call directly. A domain error
becomes one line on stderr and exit status 1; `-vv` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from memdeploy.allocator import keep_freed_memory
from memdeploy.errors import MemdeployError

logger = logging.getLogger("memdeploy")

EXIT_ERROR = 1


def positive_int(text: str) -> int:
    """Parse a command-line integer of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected an integer of 1 or more, got {text}"
        )
    return value


def non_negative_int(text: str) -> int:
    """Parse a command-line integer of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected an integer of 0 or more, got {text}"
        )
    return value


def _add_optimize(subparsers) -> None:
    parser = subparsers.add_parser(
        "optimize",
        help="run GA training against a crossbar backend",
        description="Train the float model and the quantized baseline, then run the "
        "genetic algorithm with the crossbar in the fitness loop. With no options it "
        "runs the embedded default: an MLP on scikit-learn's 8x8 digits, Gaussian "
        "backend, 2-bit weights with 5% noise.",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--model", help="mlp, protonet, mobilenetv2, micronet, or package.module:factory")
    add("--dataset", help="digits, mnist, fashion-mnist, cifar10 or cifar100")
    add("--data-dir", dest="data_dir", help="folder holding the dataset's files")
    add("--limit", type=int, help="cap on examples per split, for quick runs")
    add("--validation-fraction", dest="validation_fraction", type=float,
        help="share of the non-test examples held out for validation (default 0.15)")
    add("--backend", help="backend spec: gaussian, aihwkit, serial://PORT?options "
        "(default: $MEMDEPLOY_BACKEND, else gaussian)")
    add("--profile", help="device profile name (see `memdeploy profiles list`) or path")
    add("--generations", type=int, help="GA generations (default 25)")
    add("--population", type=int, help="GA population size (default 10)")
    add("--crossover-probability", dest="crossover_probability", type=float,
        help="two-point crossover probability (default 0.8)")
    add("--mutation-probability", dest="mutation_probability", type=float,
        help="per-gene mutation probability (default 0.001)")
    add("--selection", choices=["roulette", "rank"],
        help="roulette (sigmoid-scaled) or rank selection (default roulette)")
    add("--sigmoid-steepness", dest="sigmoid_steepness", type=float,
        help="steepness of the roulette's sigmoid scaling (default 50)")
    add("--mutation", choices=["add-noise", "max-min"], help="mutation (default add-noise)")
    add("--mutation-noise", dest="mutation_noise", type=float,
        help="add-noise mutation std as a fraction of the layer's max|w| (default 0.05)")
    add("--init", choices=["origin", "large"], help="population init (default origin)")
    add("--elitism", type=int, help="elites kept each generation (default 1)")
    add("--finetune-steps", dest="finetune_steps", type=int,
        help="noise-aware training steps inside each fitness evaluation (default 10)")
    add("--finetune-lr", dest="finetune_lr", type=float,
        help="fine-tuning Adam learning rate (default 3e-4)")
    add("--no-write-back", dest="write_back", action="store_false",
        help="score fine-tuned weights but keep the candidate's own genes")
    add("--inference-times", dest="inference_times_s", type=float, nargs="+",
        metavar="SECONDS", help="score each candidate at these times after programming")
    add("--time-combine", dest="time_combine", choices=["mean", "min"],
        help="combine scores at several inference times by mean or min")
    add("--fitness-split", dest="fitness_split", choices=["validation", "train"],
        help="split whose accuracy is the fitness (default train)")
    add("--fitness-draws", dest="fitness_draws", type=int,
        help="noise draws each fitness averages, shared by a generation (default 1)")
    add("--no-fault-aware", dest="fault_aware", action="store_false",
        help="let the GA mutate genes on stuck cells freely")
    add("--float-steps", dest="float_steps", type=int, help="float training steps")
    add("--baseline-steps", dest="baseline_steps", type=int,
        help="noise-aware training steps of the baseline")
    add("--learning-rate", dest="learning_rate", type=float)
    add("--checkpoint", help="float weights to start from instead of training")
    add("--test-draws", dest="test_draws", type=int,
        help="noise draws the test accuracy is averaged over (default 10)")
    add("--selection-draws", dest="selection_draws", type=int,
        help="validation draws used to choose the best finalist (default 5)")
    add("--finalists", type=int, help="candidates re-scored at the end (default 5)")
    add("--seed", type=int, help="seed of every random draw (default 0)")
    add("--out", help="run folder to write (default runs/<time>-<model>-<dataset>-seed<N>)")
    add("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    add("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_optimize)


def _run_optimize(args) -> int:
    from memdeploy.errors import BackendError
    from memdeploy.run import optimize

    values = vars(args).copy()
    for key in ("handler", "verbose", "command"):
        values.pop(key, None)
    out = values.pop("out", None)
    resume = values.pop("resume", None)
    quiet = values.pop("quiet", False)
    if "inference_times_s" in values:
        values["inference_times_s"] = tuple(values["inference_times_s"])
    if resume is None:
        _check_before_training(values)
    try:
        result = optimize(out=out, resume=resume, progress=not quiet, **values)
    except BackendError as err:
        run_dir = resume or out
        if run_dir and (Path(run_dir) / "manifest.json").is_file():
            err.add_note(
                f"{run_dir} keeps the finished generations: once the crossbar works "
                f"again, continue with `memdeploy optimize --resume {run_dir}` (add "
                "--backend with the same options if its port changed)"
            )
        raise
    summary = result.summary
    print(f"run folder: {result.run_dir}")
    for name in ("float", "baseline", "best"):
        entry = summary[name]
        draws = entry.get("test_draws", 1)
        spread = entry.get("test_accuracy_std")
        shown = f" ± {spread:.4f}" if spread is not None else ""
        print(f"{name:>8}: test accuracy {entry['test_accuracy']:.4f}{shown} "
              f"({draws} noise draw(s), seed {summary['seed']})")
    return 0


def _check_before_training(values: dict) -> None:
    """Fail fast on a profile or backend that would only fail after training.

    The run trains the float model and the baseline before it opens the backend, so
    an unknown backend name or a missing optional dependency is checked here first.
    """
    from backends.registry import backend_class, parse_backend_spec
    from memdeploy.errors import BackendUnavailableError
    from memdeploy.profiles import load_profile
    from memdeploy.settings import make_settings

    settings = make_settings(**values)
    load_profile(settings.profile)
    name = parse_backend_spec(settings.backend).name
    reason = backend_class(name).unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="score a run's weights on a backend")
    parser.add_argument("run_dir", help="run folder written by `memdeploy optimize`, or "
                        "a weight map folder written by export or deploy")
    parser.add_argument("--backend", help="backend spec (default: the run's)")
    parser.add_argument("--profile", help="profile name or path (default: the run's)")
    parser.add_argument("--weights", default="best",
                        help="best, baseline, a weights file, or a map folder such as "
                        "MAP_DIR/readback (default best)")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--draws", type=positive_int, default=10,
                        help="noise draws (default 10)")
    parser.add_argument("--seed", type=non_negative_int,
                        help="seed of the draws (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args) -> int:
    from memdeploy.evaluate import evaluate_run

    result = evaluate_run(
        args.run_dir, backend=args.backend, profile=args.profile, weights=args.weights,
        split=args.split, draws=args.draws, seed=args.seed,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        key = f"{result['split']}_accuracy"
        print(f"{result['split']} accuracy {result[key]:.4f} ± {result[key + '_std']:.4f} "
              f"over {result['draws']} noise draws (seed {result['seed']}) on "
              f"{result['backend']} with profile {result['profile']}")
    return 0


def _add_profiles(subparsers) -> None:
    parser = subparsers.add_parser("profiles", help="list, show or validate device profiles")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list the shipped profiles")
    show = actions.add_parser("show", help="print a profile with every default filled in")
    show.add_argument("profile", help="profile name or path")
    validate = actions.add_parser("validate", help="check profile files")
    validate.add_argument("paths", nargs="+", help="profile files or names")
    parser.set_defaults(handler=_run_profiles)


def _run_profiles(args) -> int:
    from memdeploy.profiles import list_profiles, load_profile

    if args.action == "list":
        for name in list_profiles():
            profile = load_profile(name)
            print(f"{name:28} {profile.description}")
        return 0
    if args.action == "show":
        profile = load_profile(args.profile)
        print(json.dumps(profile.model_dump(mode="json") | {"sha256": profile.content_hash()}, indent=2))
        return 0
    failures = 0
    for path in args.paths:
        try:
            load_profile(path)
            print(f"{path}: valid")
        except MemdeployError as err:
            failures += 1
            print(str(err), file=sys.stderr)
    return EXIT_ERROR if failures else 0


def _add_backends(subparsers) -> None:
    parser = subparsers.add_parser("backends", help="list backends and whether they run here")
    parser.set_defaults(handler=_run_backends)


def _run_backends(args) -> int:
    from backends import list_backends

    for info in list_backends():
        state = "available" if info.available else f"unavailable: {info.reason}"
        print(f"{info.name:10} {state}")
    return 0


def _add_emulate(subparsers) -> None:
    from backends.emulator import add_emulate_arguments

    parser = subparsers.add_parser(
        "emulate",
        help="run an emulated crossbar array until stopped",
        description="Serve an emulated array with a profile's physics on a "
        "pseudo-terminal or loopback socket. The first line printed is `port: URL`, "
        "the pyserial URL to give as --backend serial://URL.",
    )
    add_emulate_arguments(parser)
    parser.set_defaults(handler=_run_emulate)


def _run_emulate(args) -> int:
    from backends.emulator import run_from_args

    return run_from_args(args)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a pointer to --help.

    argparse prints the whole usage block above the error, which for `optimize` is
    twenty lines that hide the message. Subcommand parsers take this class too.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nsee: {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the `memdeploy` argument parser."""
    parser = _Parser(
        prog="memdeploy",
        description="Deploy neural networks onto memristor crossbars with the "
        "hardware in the loop.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v for progress messages, -vv for debug output and tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from memdeploy.cli_deploy import _add_deploy, _add_export

    builders = (
        _add_optimize, _add_evaluate, _add_export, _add_deploy, _add_profiles,
        _add_backends, _add_emulate,
    )
    for add in builders:
        add(subparsers)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    keep_freed_memory()
    try:
        return args.handler(args)
    except MemdeployError as err:
        notes = "".join(f"\n{note}" for note in getattr(err, "__notes__", ()))
        return _report(args, f"{err}{notes}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`| head`). Send what is left to /dev/null,
        # so that flushing at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        # Disk full, permission denied, a file removed while the run used it.
        return _report(args, f"{err}; check the path, its permissions and free space")
    except Exception as err:
        return _report(
            args,
            f"unexpected {type(err).__name__}: {err}; this is a bug in memdeploy: "
            "rerun with -vv for the traceback and report it",
        )


def _report(args, message: str) -> int:
    """Print one error line (a traceback too with -vv); return the exit status."""
    if args.verbose >= 2:
        logger.exception("failed")
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
