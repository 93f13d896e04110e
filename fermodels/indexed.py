"""Random access for evaluation: samples read by tar offset (:class:`IndexedSplit`), so any order
can be asked for: file order, shuffled, class-sorted (the batch-composition check) or one rank's share.
Batches are decoded as the training stream decodes them (:meth:`SampleDecoder.collate`).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ferdata.classes import CLASSES
from ferdata.layout import INFO
from ferdata.parallel import one_thread_per_worker
from ferdata.tarindex import MemberReader, index_tars
from fermodels.data import SampleDecoder, class_id
from fermodels.shardsplit import Split


class IndexedSplit(Dataset):
    """Raw samples (the members ``decoder`` reads) of a :class:`Split`, read by tar offset
    (``os.pread``); :func:`indexed_loader` decodes them a batch at a time. Exactly the shards the
    split's ``_info.json`` files list are read (as the training stream does), and each must hold
    the samples they say it holds."""

    def __init__(self, split: Split, decoder: SampleDecoder, num_classes: int) -> None:
        self.decoder, self.num_classes = decoder, num_classes
        exts = decoder.members
        self.keys: list[str] = []
        self.members: list[dict[str, tuple[str, int, int]]] = []
        self.dataset_index: list[int] = []
        labels: list[int] = []
        self.excluded_per_dataset: list[Counter] = [Counter() for _ in split.dirs]     # class name -> count
        for d, shard_dir in enumerate(split.dirs):                  # keys are unique within a dataset
            listed = split.shards_of(shard_dir)
            read_member.forget(path for path, _ in listed)      # read the files indexed now, not older ones
            index = index_tars(path for path, _ in listed)
            _check_counts(listed, index)
            for key, fields in index.items():
                if "cls" not in fields:
                    raise ValueError(f"{next(iter(fields.values()))[0]}: sample {key!r} has no label (.cls): the "
                                     "shard is damaged; check the split with `ferdata verify`")
                label = class_id(read_member(fields["cls"]), key, fields["cls"][0])
                if label >= num_classes:
                    self.excluded_per_dataset[d][CLASSES[label]] += 1
                    continue
                self.keys.append(key)
                self.members.append({e: m for e, m in fields.items() if e in exts})
                self.dataset_index.append(d)
                labels.append(label)
        self.labels = np.array(labels, np.int64)

    @property
    def excluded(self) -> Counter:
        """Samples of classes the model cannot predict (class name -> count), left out, over every dataset."""
        return sum(self.excluded_per_dataset, Counter())

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        members = self.members[i]                    # ext -> (shard, offset, size); cls is always there
        return {"__key__": self.keys[i], "__url__": members["cls"][0],
                **{e: read_member(m) for e, m in members.items()}}


def _check_counts(listed: Sequence[tuple[str, int]], index: Mapping[str, dict[str, tuple[str, int, int]]]) -> None:
    """Each listed (shard, count) holds the samples its ``_info.json`` gives (a shard cut short
    at a member boundary reads as a valid, smaller tar)."""
    found = Counter(path for fields in index.values() for path in {m[0] for m in fields.values()})
    for path, count in listed:
        if found[path] != count:
            raise ValueError(f"{path}: {found[path]} samples, {INFO} says {count}: the shard changed after "
                             f"it was written; run `ferdata verify {Path(path).parent.parent}`")


read_member = MemberReader()          # one tar member by offset; descriptors kept per process (fork-safe)


def indexed_loader(dataset: IndexedSplit, order: Sequence[int], batch_size: int, workers: int,
                   persistent: bool = False) -> DataLoader:
    """Batches of ``dataset`` in exactly ``order`` (a list of indices); ``persistent``: the workers
    serve every pass over it (the trainer's validation each epoch) instead of a fork per pass."""
    return Passes(dataset, workers, persistent).over(order, batch_size)


class Passes:
    """One loader over ``dataset`` for several passes in other orders and batch sizes (evaluate's headline
    scores, then its batch-composition check): with ``workers``, one set of worker processes serves them
    all. A loader per pass started its workers anew each time: under spawn or forkserver (macOS, Python
    3.14's default) ~2.4 s a pass, the sample's evaluation 2x fork's. ``persistent`` false: workers forked
    for each pass and ended with it (:func:`indexed_loader`'s default). :meth:`close` stops the workers."""

    def __init__(self, dataset: IndexedSplit, workers: int, persistent: bool = True) -> None:
        self.batches: list[list[int]] = []
        self.loader = DataLoader(dataset, batch_sampler=self, num_workers=workers, collate_fn=dataset.decoder.collate,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=persistent and workers > 0,
                                 worker_init_fn=one_thread_per_worker)

    def over(self, order: Sequence[int], batch_size: int) -> DataLoader:
        """The loader, its next pass over ``order`` in batches of ``batch_size`` (the last one shorter)."""
        order = list(order)
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return self.loader

    def __iter__(self):                  # the loader's batch sampler: the batches of the pass set last
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def close(self) -> None:
        close_loader(self.loader)


def close_loader(loader: DataLoader | None) -> None:
    """Stop a loader's persistent workers now (the trainer's loaders when training ends, by an error
    or Ctrl-C too): left to the interpreter's exit, multiprocessing terminated the validation loader's,
    and each left its ``pymp-*`` folder in ``$TMPDIR``; left to the garbage collector, a caller that
    keeps the error (or a loop of runs in one process) kept them running."""
    running = getattr(loader, "_iterator", None)              # DataLoader keeps persistent workers here
    if running is not None:
        running._shutdown_workers()
        loader._iterator = None
