"""Which scene goes where: the multi-dataset ratio schedule and the per-pass scene order.

Everything here is a pure function of (seed, position), so an iterator re-created at any step yields
exactly what the uninterrupted one would have (resume = remember the step).

`RatioSchedule` is the reference's `MultiDatasetDataloader` (docs/reference.md §6): units (batches, or samples in
per-sample mode) go round-robin, `ratios[0]` of dataset 0, then `ratios[1]` of dataset 1, ...; an epoch
ends when dataset 0 is exhausted (`len = L0 // r0 * sum(r) + L0 % r0`), while the other datasets restart
whenever they run out (each restart is a fresh shuffle) and are re-created at every epoch.
"""

import numpy as np


class RatioSchedule:
    def __init__(self, lengths, ratios):
        """`lengths[d]`: units of dataset d per pass; `ratios[d]`: consecutive units per round."""
        if len(lengths) != len(ratios) or not lengths:
            raise ValueError(f"need one ratio per dataset: {len(lengths)} datasets, ratios {ratios}")
        if any(int(r) < 1 for r in ratios):
            raise ValueError(f"ratios must be positive integers, got {ratios}")
        if any(int(n) < 1 for n in lengths):
            raise ValueError(f"every dataset needs at least one unit per pass, got {lengths}")
        self.lengths = tuple(int(n) for n in lengths)
        self.ratios = tuple(int(r) for r in ratios)
        self.round = sum(self.ratios)
        self.bounds = np.cumsum((0,) + self.ratios)
        self.full_rounds = self.lengths[0] // self.ratios[0]
        self.epoch_length = self.full_rounds * self.round + self.lengths[0] % self.ratios[0]

    def locate(self, unit):
        """Unit index -> (dataset, epoch, restart of that dataset within the epoch, position in pass)."""
        epoch, s = divmod(int(unit), self.epoch_length)
        rnd, within = divmod(s, self.round)
        if rnd < self.full_rounds:
            d = int(np.searchsorted(self.bounds, within, side="right")) - 1
            count = rnd * self.ratios[d] + within - int(self.bounds[d])
        else:  # the epoch's tail: the last L0 % r0 units of dataset 0
            d, count = 0, rnd * self.ratios[0] + within
        restart, position = divmod(count, self.lengths[d])
        return d, epoch, restart, position


def pass_scenes(num_scenes, seed, key):
    """The scene order of one pass: a seeded permutation of all scenes.

    `key` is a tuple of ints naming the pass (dataset, epoch, restart) so each pass has its own order.
    """
    return np.random.default_rng([seed, 0, *key]).permutation(num_scenes)
