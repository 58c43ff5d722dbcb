"""Settings of an optimize run, validated, recorded in the manifest, checked on resume."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memdeploy.errors import MemdeployError
from memdeploy.evaluation import FitnessSettings
from memdeploy.ga import GASettings

DEFAULT_PROFILE = "paper-protonet-mnist"
"""The embedded default's profile: 2-bit weights with 5% programming noise."""


class SettingsError(MemdeployError, ValueError):
    """A run setting is invalid."""


class OptimizeSettings(BaseModel):
    """Every setting that decides an optimize run's result."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    model: str = "mlp"
    """Model name (mlp, protonet, mobilenetv2, micronet) or `package.module:factory`."""

    dataset: str = "digits"
    """Dataset name: digits, mnist, fashion-mnist, cifar10, cifar100."""

    data_dir: str | None = None
    """Folder with the dataset's files; None searches the default places."""

    limit: int | None = Field(default=None, ge=1)
    """Cap on examples per split, for quick runs."""

    backend: str = "gaussian"
    """Backend spec string: gaussian, aihwkit, serial://PORT?options."""

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
    mutation: Literal["add-noise", "max-min"] = "max-min"
    mutation_probability: float = Field(default=0.01, ge=0, le=1)
    mutation_noise: float = Field(default=0.05, ge=0)
    init: Literal["origin", "large"] = "origin"
    elitism: int = Field(default=1, ge=0)

    finetune_steps: int = Field(default=5, ge=0)
    """Noise-aware fine-tuning steps inside each fitness evaluation."""

    finetune_lr: float = Field(default=1e-3, gt=0)
    write_back: bool = True
    inference_times_s: tuple[float, ...] = ()
    time_combine: Literal["mean", "min"] = "mean"

    fault_aware: bool = True
    """Hold genes on stuck cells to the values their cell pairs can reach."""

    finalists: int = Field(default=5, ge=1)
    """Candidates re-scored at the end (best of recent generations and final population)."""

    selection_draws: int = Field(default=5, ge=1)
    """Validation noise draws each finalist is re-scored on to pick the best."""

    test_draws: int = Field(default=10, ge=1)
    """Noise draws the reported test accuracy is averaged over."""

    def ga_settings(self) -> GASettings:
        """The GA part of these settings."""
        if self.elitism >= self.population:
            raise SettingsError(
                f"elitism {self.elitism} must be smaller than the population "
                f"{self.population}"
            )
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
            time_combine=self.time_combine,
        )


def make_settings(**values) -> OptimizeSettings:
    """Validate settings given as keywords; errors name the setting and the value."""
    try:
        return OptimizeSettings(**values)
    except ValidationError as err:
        problems = [
            f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}"
            for e in err.errors()
        ]
        raise SettingsError("invalid setting(s): " + "; ".join(problems)) from err


DEFAULT_STEPS = {
    # model: (float training steps, noise-aware baseline steps)
    "mlp": (1500, 1000),
    "protonet": (1000, 500),
    "mobilenetv2": (2000, 1000),
    "micronet": (2000, 1000),
}
