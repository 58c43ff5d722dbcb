"""Settings of an optimize run, validated, recorded in the manifest, checked on resume."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from memdeploy.errors import BackendSpecError, MemdeployError
from memdeploy.evaluation import FitnessSettings
from memdeploy.ga import GASettings

BACKEND_ENV_VAR = "MEMDEPLOY_BACKEND"
"""Environment variable with the backend spec used when none is given."""

DEFAULT_PROFILE = "paper-protonet-mnist"
"""The embedded default's profile: 2-bit weights with 5% programming noise."""


class SettingsError(MemdeployError, ValueError):
    """A run setting is invalid."""


PositiveSeconds = Annotated[float, Field(gt=0)]


class OptimizeSettings(BaseModel):
    """Every setting that decides an optimize run's result."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False
    )

    model: str = "mlp"
    """Model name (mlp, protonet, mobilenetv2, micronet) or `package.module:factory`."""

    dataset: str = "digits"
    """Dataset name: digits, mnist, fashion-mnist, cifar10, cifar100."""

    data_dir: str | None = None
    """Folder with the dataset's files; None searches the default places."""

    validation_fraction: float = Field(default=0.15, gt=0, lt=1)
    """Share of the non-test examples held out for validation, which the fitness and
    the choice of the best candidate see."""

    limit: int | None = Field(default=None, ge=1)
    """Cap on examples per split, for quick runs."""

    backend: str = Field(
        default_factory=lambda: os.environ.get(BACKEND_ENV_VAR) or "gaussian"
    )
    """Backend spec string: gaussian, aihwkit, serial://PORT?options. The default is
    the environment variable MEMDEPLOY_BACKEND, else gaussian."""

    profile: str = DEFAULT_PROFILE
    """Device profile name or path."""

    seed: int = Field(default=0, ge=0, lt=2**32)

    checkpoint: str | None = None
    """Float weights to start from (safetensors or a torch state dict) instead of
    training the float model."""

    float_steps: int | None = Field(default=None, ge=0)
    """Float training steps; None uses the model's default."""

    baseline_steps: int | None = Field(default=None, ge=0)
    """Noise-aware training steps for the baseline; None uses the model's default."""

    learning_rate: float = Field(default=1e-3, gt=0)

    population: int = Field(default=10, ge=2)
    generations: int = Field(default=25, ge=0)
    selection: Literal["roulette", "rank"] = "roulette"
    sigmoid_steepness: float = Field(default=50.0, ge=0)
    crossover_probability: float = Field(default=0.8, ge=0, le=1)
    mutation: Literal["add-noise", "max-min"] = "add-noise"
    mutation_probability: float = Field(default=0.001, ge=0, le=1)
    mutation_noise: float = Field(default=0.05, ge=0)
    init: Literal["origin", "large"] = "origin"
    elitism: int = Field(default=1, ge=0)

    finetune_steps: int = Field(default=10, ge=0)
    """Noise-aware fine-tuning steps inside each fitness evaluation."""

    finetune_lr: float = Field(default=3e-4, gt=0)
    """Adam learning rate of the fine-tuning; below the baseline's, so that each
    candidate's short fresh-optimizer run refines it instead of shaking it."""
    write_back: bool = True
    inference_times_s: tuple[PositiveSeconds, ...] = ()
    """Times after programming, in s, at which each candidate is scored."""

    time_combine: Literal["mean", "min"] = "mean"

    fitness_split: Literal["validation", "train"] = "train"
    """Split whose accuracy is the GA's fitness; finalists are always chosen on the
    validation split and the test split is scored only at the end."""

    fitness_draws: int = Field(default=1, ge=1)
    """Programming noise draws each fitness averages; all candidates of a generation
    share them."""

    fault_aware: bool = True
    """Hold genes on stuck cells to the values their cell pairs can reach."""

    finalists: int = Field(default=5, ge=1)
    """Candidates re-scored at the end (best of recent generations and final population)."""

    selection_draws: int = Field(default=5, ge=1)
    """Validation noise draws each finalist is re-scored on to pick the best."""

    test_draws: int = Field(default=10, ge=1)
    """Noise draws the reported test accuracy is averaged over."""

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, name: str) -> str:
        from memdeploy.datasets import DATASET_NAMES

        if name not in DATASET_NAMES:
            raise ValueError(
                f"unknown dataset {name!r}, expected one of {', '.join(DATASET_NAMES)}"
            )
        return name

    @field_validator("model")
    @classmethod
    def _check_model_spec(cls, spec: str) -> str:
        # A `module:factory` path is imported when the run builds the model.
        from memdeploy.models import MODELS

        module, _, factory = spec.partition(":")
        if spec not in MODELS and not (module and factory):
            raise ValueError(
                f"model {spec!r} is neither a known model ({', '.join(MODELS)}) nor a "
                "'package.module:factory' path"
            )
        return spec

    @field_validator("backend")
    @classmethod
    def _check_backend_spec(cls, spec: str) -> str:
        # Only the syntax is checked here: whether the backend is installed and
        # takes the options is known when it is opened.
        from backends.registry import parse_backend_spec

        try:
            parse_backend_spec(spec)
        except BackendSpecError as err:
            raise ValueError(str(err)) from err
        return spec

    @model_validator(mode="after")
    def _check_elitism(self) -> OptimizeSettings:
        if self.elitism >= self.population:
            raise ValueError(
                f"elitism {self.elitism} must be smaller than the population "
                f"{self.population}: lower --elitism or raise --population"
            )
        return self

    def ga_settings(self) -> GASettings:
        """The GA part of these settings."""
        return GASettings(
            population=self.population, generations=self.generations,
            selection=self.selection, sigmoid_steepness=self.sigmoid_steepness,
            crossover_probability=self.crossover_probability, mutation=self.mutation,
            mutation_probability=self.mutation_probability,
            mutation_noise=self.mutation_noise, init=self.init, elitism=self.elitism,
        )

    def fitness_settings(self) -> FitnessSettings:
        """The fitness part of these settings."""
        return FitnessSettings(
            finetune_steps=self.finetune_steps, finetune_lr=self.finetune_lr,
            write_back=self.write_back, inference_times_s=self.inference_times_s,
            time_combine=self.time_combine, noise_draws=self.fitness_draws,
            split=self.fitness_split,
        )


def make_settings(**values) -> OptimizeSettings:
    """Validate settings given as keywords; errors name the setting and the value."""
    try:
        return OptimizeSettings(**values)
    except ValidationError as err:
        problems = [_describe_problem(problem) for problem in err.errors()]
        raise SettingsError("invalid setting(s): " + "; ".join(problems)) from err


def _describe_problem(problem) -> str:
    """Describe one validation problem with the setting, its CLI option and value."""
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "no such setting; `memdeploy optimize --help` lists them"
    if not problem["loc"]:
        return message
    name = str(problem["loc"][0])
    where = ".".join(map(str, problem["loc"]))
    option = _CLI_OPTIONS.get(name)
    shown = f" ({option})" if option else ""
    return f"{where}={problem.get('input')!r}{shown}: {message}"


_CLI_OPTIONS = {
    name: f"--{name.replace('_', '-')}" for name in OptimizeSettings.model_fields
} | {
    "inference_times_s": "--inference-times",
    "write_back": "--no-write-back",
    "fault_aware": "--no-fault-aware",
}
"""The `memdeploy optimize` option that sets each setting."""


DEFAULT_STEPS = {
    # model: (float training steps, noise-aware baseline steps)
    "mlp": (1500, 1000),
    "protonet": (1000, 500),
    "mobilenetv2": (2000, 1000),
    "micronet": (2000, 1000),
}
