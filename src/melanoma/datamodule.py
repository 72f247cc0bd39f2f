"""Training data: images decoded ONCE into uint8 tensors, a seeded class-balanced sampler that is DDP-aware, and a
Lightning DataModule. Augmentation randomness is a pure function of (seed, epoch, index) so a resumed run sees
exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from melanoma.data import DatasetTable, load_image
from melanoma.transforms import SourceNoiseMatch, eval_transform, prepare_image, train_transform


def decode_prepared(path, preprocessing: dict) -> torch.Tensor:
    """Decode one image through the shared PIL stage (transforms.prepare_image: resize, colour constancy);
    uint8 CHW tensor."""
    image = prepare_image(load_image(path), preprocessing)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_cache(table: DatasetTable, preprocessing: dict, workers: int = 4) -> list[torch.Tensor]:
    """Decode every image of `table` once, through the shared PIL stage (what both presets start from)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: decode_prepared(s.path, preprocessing), table.samples))


class CachedImages(Dataset):
    """(image tensor, label) pairs from the decoded cache; transforms seeded by (seed, epoch, index). `before`:
    an optional per-image step before the transform, called as before(image, index) (SourceNoiseMatch)."""

    def __init__(self, images: list[torch.Tensor], labels: np.ndarray, transform, seed: int = 0, before=None):
        self.images, self.labels, self.transform, self.seed = images, np.asarray(labels), transform, seed
        self.before, self.epoch = before, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + int(index))
            x = self.images[index] if self.before is None else self.before(self.images[index], int(index))
            x = self.transform(x)
        return x, int(self.labels[index])


class SeededSampler(Sampler[int]):
    """Draws one epoch of indices from a generator seeded by (seed, epoch), then keeps this rank's share.

    balanced=True: sampling with replacement, each class equally likely and, within a class, each data source
    (`sources`: one integer per sample, e.g. 0 = primary dataset, 1 = HAM10000) equally likely, so a big extra
    source widens a class without drowning the primary data in it. One source: weights 1/class count.
    Every rank computes the same permutation and takes indices[rank::world_size], so ranks see disjoint draws.
    """

    def __init__(self, labels, balanced: bool, seed: int, rank: int = 0, world_size: int = 1, dataset=None,
                 samples_per_epoch: int | None = None, sources=None, natural_classes: bool = False):
        self.labels = torch.as_tensor(np.asarray(labels))
        self.sources = torch.as_tensor(np.zeros(len(labels), np.int64) if sources is None else np.asarray(sources))
        self.balanced, self.seed, self.rank, self.world_size = balanced, seed, rank, world_size
        self.dataset, self.epoch, self.natural_classes = dataset, 0, natural_classes
        per_epoch = samples_per_epoch or len(self.labels)
        self.num_samples = -(-per_epoch // world_size)  # ceil: every rank gets the same count

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; also re-seeds the dataset's augmentation."""
        self.epoch = epoch
        if self.dataset is not None:
            self.dataset.epoch = epoch

    def sample_weights(self) -> torch.Tensor:
        """1 / (number of sources in the sample's class * count of its (class, source) cell); times the class's
        count where the classes keep their natural mix."""
        n_sources = int(self.sources.max()) + 1
        cell = self.labels * n_sources + self.sources  # one id per (class, source) pair
        sources_per_class = torch.bincount(torch.unique(cell) // n_sources).double()
        weights = 1.0 / (sources_per_class[self.labels] * torch.bincount(cell).double()[cell])
        return weights * torch.bincount(self.labels).double()[self.labels] if self.natural_classes else weights

    def epoch_indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        total = self.num_samples * self.world_size
        if self.balanced:
            drawn = torch.multinomial(self.sample_weights(), total, replacement=True, generator=g)
        else:
            drawn = torch.randperm(len(self.labels), generator=g)
            drawn = drawn.repeat(-(-total // len(drawn)))[:total]  # an epoch longer than the data wraps around
        return drawn[self.rank::self.world_size].tolist()

    def __iter__(self):
        return iter(self.epoch_indices())

    def __len__(self) -> int:
        return self.num_samples


class LesionDataModule(L.LightningDataModule):
    """Train/validation loaders over the decoded cache for one split (hold-out or one CV fold)."""

    def __init__(self, images, labels, train_idx, val_idx, preprocessing: dict, batch_size: int,
                 balanced: bool, seed: int, num_workers: int, samples_per_epoch: int | None = None,
                 sources=None, augmentation: str = "standard", targets=None, natural_classes: bool = False):
        super().__init__()
        # labels: one class per image (sampling, validation); targets: what the loss sees (a coarse target is
        # >= the class count, see LesionClassifier._loss); None = the labels
        self.images, self.labels = images, np.asarray(labels)
        self.targets = self.labels if targets is None else np.asarray(targets)
        self.train_idx, self.val_idx = np.asarray(train_idx), np.asarray(val_idx)
        self.pre, self.batch_size, self.balanced = preprocessing, batch_size, balanced
        self.seed, self.num_workers, self.samples_per_epoch = seed, num_workers, samples_per_epoch
        self.sources = None if sources is None else np.asarray(sources)
        self.augmentation, self.natural_classes = augmentation, natural_classes
        self.train_sampler: SeededSampler | None = None
        self.noise_match: SourceNoiseMatch | None = None

    def _subset(self, idx, transform, targets=None, before=None) -> CachedImages:
        labels = (self.labels if targets is None else targets)[idx]
        return CachedImages([self.images[i] for i in idx], labels, transform, self.seed, before)

    def _noise_match(self) -> SourceNoiseMatch | None:
        """The per-source noise of augmentation "noise-match", fitted on the training images once per run."""
        if self.augmentation != "noise-match" or self.sources is None:
            return None
        if self.noise_match is None:
            self.noise_match = SourceNoiseMatch.fit([self.images[i] for i in self.train_idx],
                                                    self.sources[self.train_idx])
            print(self.noise_match.summary() if self.noise_match else "noise-match: one source, nothing to match")
        return self.noise_match

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = self._subset(self.train_idx, train_transform(self.pre, self.augmentation), self.targets,
                               self._noise_match())
        self.train_sampler = SeededSampler(self.labels[self.train_idx], self.balanced, self.seed, rank, world, dataset,
                                           self.samples_per_epoch,
                                           None if self.sources is None else self.sources[self.train_idx],
                                           self.natural_classes)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=self.train_sampler,
                          num_workers=self.num_workers, persistent_workers=False, drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        shard = self.val_idx[rank::world]  # each rank validates its own share; torchmetrics syncs the totals
        return DataLoader(self._subset(shard, eval_transform(self.pre)), batch_size=self.batch_size * 2,
                          shuffle=False, num_workers=self.num_workers)
