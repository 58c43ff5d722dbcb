"""Tasks: how a model is trained and scored on a dataset.

`ClassificationTask` scores logits against labels. `EpisodicTask` follows the
prototypical few-shot protocol: training episodes draw 5 classes with 5 support and
15 query images each; evaluation episodes use every class of the split, 5 support
and 15 query images per class, and the same fixed, seeded episodes every time, so
that two candidates are scored on identical data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from memdeploy.models.protonet import prototype_logits

Forward = Callable[[torch.Tensor], torch.Tensor]

EVAL_BATCH = 1024
"""Default and maximum number of images per forward call when scoring a split.

A backend that scales inputs or outputs over the batch's range (DAC and ADC of the
periphery) sees batches of the size the caller chose.
"""


def _split(data, name: str):
    if name not in ("train", "validation", "test"):
        raise ValueError(f"unknown split {name!r}: use train, validation or test")
    return getattr(data, name)


class ClassificationTask:
    """Supervised classification with cross-entropy and top-1 accuracy."""

    kind = "classification"

    def __init__(self, data, batch_size: int = 64) -> None:
        self.data = data
        self.batch_size = batch_size
        self._inputs: dict[tuple[str, int], list[torch.Tensor]] = {}

    def sample_batch(self, rng: np.random.Generator):
        """Draw a training minibatch."""
        split = self.data.train
        index = torch.from_numpy(rng.integers(0, len(split.labels), self.batch_size))
        return split.images[index], split.labels[index]

    def loss(self, forward: Forward, batch) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(forward(images), labels)

    def evaluation_inputs(
        self, split_name: str, batch_size: int = EVAL_BATCH
    ) -> list[torch.Tensor]:
        """Return the split's images in batches, as scoring runs them."""
        key = (split_name, batch_size)
        if key not in self._inputs:
            images = _split(self.data, split_name).images
            self._inputs[key] = list(images.split(batch_size))
        return self._inputs[key]

    def score(self, outputs: torch.Tensor, split_name: str) -> float:
        """Top-1 accuracy of logits for every image of `evaluation_inputs`."""
        labels = _split(self.data, split_name).labels
        return int((outputs.argmax(dim=1) == labels).sum()) / len(labels)

    def accuracy(
        self, forward: Forward, split_name: str, batch_size: int = EVAL_BATCH
    ) -> float:
        """Top-1 accuracy of `forward` on a whole split."""
        inputs = self.evaluation_inputs(split_name, batch_size)
        return self.score(_run(forward, inputs), split_name)


@dataclass(frozen=True)
class Episode:
    """Indices into a split and episode-local labels 0..ways-1."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    ways: int


class EpisodicTask:
    """Prototypical few-shot classification (ProtoNet)."""

    kind = "episodic"

    def __init__(
        self,
        data,
        *,
        train_ways: int = 5,
        shots: int = 5,
        queries: int = 15,
        eval_episodes: dict[str, int] | None = None,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.train_ways = min(train_ways, data.num_classes)
        self.shots = shots
        self.queries = queries
        counts = {"train": 10, "validation": 10, "test": 30} | (eval_episodes or {})
        self._by_class = {
            name: _index_by_class(_split(data, name).labels, data.num_classes)
            for name in ("train", "validation", "test")
        }
        self._eval_episodes = {
            name: [
                self._episode(name, data.num_classes, np.random.default_rng([seed, i, n]))
                for i in range(count)
            ]
            for n, (name, count) in enumerate(counts.items())
        }
        self._inputs: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._rows: dict[str, tuple[np.ndarray, list[tuple]]] = {}

    def _episode(self, split_name: str, ways: int, rng: np.random.Generator) -> Episode:
        by_class = self._by_class[split_name]
        classes = rng.choice(len(by_class), size=ways, replace=False)
        support, support_labels, query, query_labels = [], [], [], []
        for label, cls in enumerate(classes):
            pool = by_class[cls]
            need = self.shots + self.queries
            chosen = rng.choice(pool, size=need, replace=len(pool) < need)
            support.append(chosen[: self.shots])
            query.append(chosen[self.shots :])
            support_labels.append(np.full(self.shots, label))
            query_labels.append(np.full(self.queries, label))
        return Episode(
            np.concatenate(support), np.concatenate(support_labels),
            np.concatenate(query), np.concatenate(query_labels), ways,
        )

    def sample_batch(self, rng: np.random.Generator) -> Episode:
        """Draw a training episode."""
        return self._episode("train", self.train_ways, rng)

    def loss(self, forward: Forward, episode: Episode) -> torch.Tensor:
        images = self.data.train.images
        embedded = forward(images[np.concatenate([episode.support, episode.query])])
        support = embedded[: len(episode.support)]
        query = embedded[len(episode.support) :]
        logits = prototype_logits(
            support, torch.from_numpy(episode.support_labels), query, episode.ways
        )
        return F.cross_entropy(logits, torch.from_numpy(episode.query_labels))

    def evaluation_inputs(
        self, split_name: str, batch_size: int = EVAL_BATCH
    ) -> list[torch.Tensor]:
        """Return every image the split's episodes use, once, in batches."""
        key = (split_name, batch_size)
        if key not in self._inputs:
            images = _split(self.data, split_name).images
            needed = torch.from_numpy(self._episode_rows(split_name)[0])
            self._inputs[key] = list(images[needed].split(batch_size))
        return self._inputs[key]

    def score(self, embedded: torch.Tensor, split_name: str) -> float:
        """Mean query accuracy over the split's episodes, from the embeddings of
        `evaluation_inputs`."""
        episodes = self._episode_rows(split_name)[1]
        correct = total = 0
        for support, support_labels, query, query_labels, ways in episodes:
            logits = prototype_logits(
                embedded[support], support_labels, embedded[query], ways
            )
            correct += int((logits.argmax(1).numpy() == query_labels).sum())
            total += len(query_labels)
        return correct / total

    def accuracy(
        self, forward: Forward, split_name: str, batch_size: int = EVAL_BATCH
    ) -> float:
        """Mean query accuracy over the split's fixed evaluation episodes."""
        inputs = self.evaluation_inputs(split_name, batch_size)
        return self.score(_run(forward, inputs), split_name)

    def _episode_rows(self, split_name: str):
        """Return the sorted indices of the images the episodes use, and per episode
        its support and query rows among them, labels and ways."""
        if split_name not in self._rows:
            episodes = self._eval_episodes[split_name]
            used = [np.r_[e.support, e.query] for e in episodes]
            needed = np.unique(np.concatenate(used))
            rows = [
                (
                    torch.from_numpy(np.searchsorted(needed, e.support)),
                    torch.from_numpy(e.support_labels),
                    torch.from_numpy(np.searchsorted(needed, e.query)),
                    e.query_labels,
                    e.ways,
                )
                for e in episodes
            ]
            self._rows[split_name] = (needed, rows)
        return self._rows[split_name]


def _run(forward: Forward, batches: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([forward(images) for images in batches])


def _index_by_class(labels: torch.Tensor, num_classes: int) -> list[np.ndarray]:
    array = labels.numpy()
    return [np.flatnonzero(array == cls) for cls in range(num_classes)]


def make_task(kind: str, data, *, seed: int = 0, **options):
    """Build the task for a model kind ("classification" or "episodic")."""
    if kind == "episodic":
        return EpisodicTask(data, seed=seed, **options)
    return ClassificationTask(data, **options)
