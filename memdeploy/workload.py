"""Build the data, model and task a run's settings name."""

from __future__ import annotations

from memdeploy.models import build_model, task_kind
from memdeploy.settings import OptimizeSettings
from memdeploy.tasks import make_task


def prepare_model_and_task(settings: OptimizeSettings):
    """Return (model, task, data) for the settings, all seeded by `settings.seed`."""
    from memdeploy.datasets import load_dataset

    data = load_dataset(
        settings.dataset,
        settings.data_dir,
        seed=settings.seed,
        validation_fraction=settings.validation_fraction,
        limit=settings.limit,
    )
    model = build_model(settings.model, data.image_shape, data.num_classes, seed=settings.seed)
    task = make_task(task_kind(model), data, seed=settings.seed)
    return model, task, data
