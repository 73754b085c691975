"""Subject-level splits: every image of a subject lands in exactly one split.

Cross-validation is leave-one-normal-donor-out: C-NMC normal cells come overwhelmingly from a
few donors, so each large normal donor is a test fold of its own (and the small donors share
one), while leukaemic patients are spread over the folds so each is held out exactly once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from training.data import LABELS


@dataclass(frozen=True)
class Split:
    """Subject IDs per role. ``test`` may be empty (the shipped model has no test subjects)."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...] = ()

    def masks(self, subjects: np.ndarray) -> dict[str, np.ndarray]:
        return {
            role: np.isin(subjects, list(getattr(self, role)))
            for role in ("train", "validation", "test")
        }

    def check_disjoint(self) -> None:
        sets = [set(self.train), set(self.validation), set(self.test)]
        if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise ValueError(f"split {self.name}: subjects overlap between roles")


def subject_table(subjects: np.ndarray, labels: np.ndarray) -> dict[str, tuple[str, int]]:
    """subject_id -> (label, number of images)."""
    counts = Counter(subjects.tolist())
    label_of = {
        s: LABELS[int(lab)] for s, lab in zip(subjects.tolist(), labels.tolist(), strict=True)
    }
    return {s: (label_of[s], counts[s]) for s in sorted(counts)}


def pick_validation(
    table: dict[str, tuple[str, int]],
    candidates: list[str],
    fraction: float = 0.15,
    max_share: float = 0.25,
) -> list[str]:
    """Per class, take the smallest candidate subjects until ``fraction`` of the class's images.

    A subject holding more than ``max_share`` of its class is kept for training (a large
    normal donor is worth more as training data), unless the class would otherwise have no
    validation subject at all; then its smallest candidate is taken.
    """
    chosen: list[str] = []
    for label in LABELS:
        pool = sorted(
            (s for s in candidates if table[s][0] == label), key=lambda s: (table[s][1], s)
        )
        total = sum(table[s][1] for s in pool)
        if len(pool) < 2:
            raise ValueError(f"need at least two '{label}' subjects to hold one out for validation")
        taken: list[str] = []
        n = 0
        for s in pool:
            if n >= fraction * total or len(taken) == len(pool) - 1:
                break
            if table[s][1] > max_share * total:
                continue
            taken.append(s)
            n += table[s][1]
        if not taken:
            taken = [pool[0]]
        chosen.extend(taken)
    return chosen


def final_split(
    table: dict[str, tuple[str, int]], fraction: float = 0.15, max_share: float = 0.25
) -> Split:
    """Split for a shipped model: all subjects train except a held-out validation group."""
    validation = pick_validation(table, list(table), fraction, max_share)
    train = [s for s in table if s not in validation]
    split = Split("final", tuple(sorted(train)), tuple(sorted(validation)))
    split.check_disjoint()
    return split


def cv_splits(
    table: dict[str, tuple[str, int]],
    n_folds: int = 3,
    fraction: float = 0.15,
    max_share: float = 0.25,
) -> list[Split]:
    """Leave-one-normal-donor-out folds; inside each, validation subjects distinct from test."""
    groups: list[list[str]] = [[] for _ in range(n_folds)]
    hem = sorted((s for s in table if table[s][0] == "hem"), key=lambda s: (-table[s][1], s))
    all_ = sorted((s for s in table if table[s][0] == "all"), key=lambda s: (-table[s][1], s))
    hem_total = sum(table[s][1] for s in hem)
    big = [s for s in hem if table[s][1] >= 0.1 * hem_total][: n_folds - 1]
    for k, s in enumerate(big):
        groups[k].append(s)
    small = [s for s in hem if s not in big]
    free = list(range(len(big), n_folds)) or list(range(n_folds))
    for i, s in enumerate(small):
        groups[free[i % len(free)]].append(s)
    load = [0] * n_folds
    for s in all_:  # greedy: biggest patient to the fold with the fewest leukaemic images
        k = min(range(n_folds), key=lambda j: (load[j], j))
        groups[k].append(s)
        load[k] += table[s][1]
    splits: list[Split] = []
    for k, test in enumerate(groups):
        rest = [s for s in table if s not in test]
        validation = pick_validation(table, rest, fraction, max_share)
        train = [s for s in rest if s not in validation]
        split = Split(
            f"fold_{chr(ord('A') + k)}",
            tuple(sorted(train)),
            tuple(sorted(validation)),
            tuple(sorted(test)),
        )
        split.check_disjoint()
        splits.append(split)
    return splits
