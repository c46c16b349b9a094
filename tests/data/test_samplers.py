"""Epoch plans of every sampling rule and their distributed shares."""

from collections import Counter

import numpy as np
import pytest

from tailtune.data.samplers import SAMPLERS, EpochSampler, build_sampler
from tailtune.errors import ConfigError

COUNTS = [500, 200, 80, 30, 10]
LABELS = np.repeat(np.arange(5), COUNTS)  # N = 820


def freq(plan) -> np.ndarray:
    return np.bincount(LABELS[np.asarray(plan)], minlength=5) / len(plan)


def test_registry_lists_the_four_rules():
    assert SAMPLERS.names() == ["class_aware", "class_balanced", "instance", "square_root"]
    with pytest.raises(ConfigError, match="unknown sampler 'class_balance'. Did you mean 'class_balanced'"):
        build_sampler("class_balance", LABELS)


@pytest.mark.parametrize("rule", SAMPLERS.names())
def test_plan_is_a_pure_function_of_seed_and_epoch(rule):
    s = build_sampler(rule, LABELS, seed=3, rank=0, world_size=1)
    a, b = s.plan(0), s.plan(0)
    assert len(a) == len(LABELS) and np.array_equal(a, b)
    assert not np.array_equal(a, s.plan(1))
    assert not np.array_equal(a, build_sampler(rule, LABELS, seed=4, rank=0, world_size=1).plan(0))
    assert a.min() >= 0 and a.max() < len(LABELS)


def test_instance_plan_is_a_permutation():
    plan = build_sampler("instance", LABELS, rank=0, world_size=1).plan(0)
    assert sorted(plan.tolist()) == list(range(len(LABELS)))


def test_class_aware_plan_gives_every_class_equal_shares_exactly():
    s = build_sampler("class_aware", LABELS, seed=1, rank=0, world_size=1)
    plan = s.plan(0)
    counts = np.bincount(LABELS[plan], minlength=5)
    assert sorted(counts.tolist()) == [164] * 5  # 820 / 5
    # rounds: every block of 5 consecutive positions holds each class once
    assert all(sorted(LABELS[plan[i:i + 5]].tolist()) == [0, 1, 2, 3, 4] for i in range(0, 820, 5))
    # a class cycles through all its images before repeating one: the 10-image class is used 16.4 times
    few = Counter(plan[LABELS[plan] == 4].tolist())
    assert sorted(set(few.values())) == [16, 17] and len(few) == 10
    # uneven: N = 7 over 3 classes gives 3/2/2
    odd = build_sampler("class_aware", [0, 0, 0, 0, 1, 1, 2], rank=0, world_size=1).plan(0)
    assert sorted(np.bincount(np.array([0, 0, 0, 0, 1, 1, 2])[odd]).tolist()) == [2, 2, 3]


def test_class_balanced_and_square_root_class_frequencies():
    # 40 epochs of 820 draws: the class frequencies are within 4 standard errors of the target
    sq = np.sqrt(COUNTS)
    targets = {"class_balanced": np.full(5, 0.2), "square_root": sq / sq.sum(), "instance": np.array(COUNTS) / 820}
    for rule, want in targets.items():
        s = build_sampler(rule, LABELS, seed=0, rank=0, world_size=1)
        plan = np.concatenate([s.plan(e) for e in range(40)])
        se = np.sqrt(want * (1 - want) / len(plan))
        assert (np.abs(freq(plan) - want) < 4 * se + 1e-12).all(), rule
    # within a class, images are drawn uniformly: every image of the 10-image class shows up
    plan = np.concatenate([build_sampler("class_balanced", LABELS, rank=0, world_size=1).plan(e) for e in range(5)])
    assert set(plan[LABELS[plan] == 4].tolist()) == set(np.flatnonzero(LABELS == 4).tolist())


def test_empty_classes_are_never_drawn():
    labels = np.array([0, 0, 0, 2, 2, 5])  # classes 1, 3, 4 have no image
    for rule in SAMPLERS.names():
        plan = build_sampler(rule, labels, rank=0, world_size=1).plan(0)
        assert set(labels[plan].tolist()) <= {0, 2, 5}, rule


@pytest.mark.parametrize("rule", SAMPLERS.names())
@pytest.mark.parametrize("world", [2, 3, 7])
def test_distributed_shares_are_disjoint_equal_and_cover_the_plan(rule, world):
    shares = [build_sampler(rule, LABELS, seed=5, rank=r, world_size=world) for r in range(world)]
    for s in shares:
        s.set_epoch(2)
    plan = shares[0].plan()
    per_rank = -(-len(LABELS) // world)
    got = [list(s) for s in shares]
    assert all(len(g) == per_rank == len(s) for g, s in zip(got, shares))
    # rank r holds positions r, r + W, ... of the plan padded by wrapping to W * per_rank
    padded = np.concatenate([plan, plan[:per_rank * world - len(plan)]])
    positions = [list(range(r, len(padded), world)) for r in range(world)]
    assert all(g == padded[p].tolist() for g, p in zip(got, positions))
    assert sorted(i for p in positions for i in p) == list(range(len(padded)))  # disjoint, complete
    assert Counter(i for g in got for i in g) == Counter(padded.tolist())


def test_every_rank_agrees_on_the_plan_and_single_process_is_rank_0_of_1():
    a = build_sampler("square_root", LABELS, seed=9, rank=0, world_size=4)
    b = build_sampler("square_root", LABELS, seed=9, rank=3, world_size=4)
    assert np.array_equal(a.plan(1), b.plan(1))
    single = EpochSampler("instance", LABELS, seed=9)
    assert (single.rank, single.world_size) == (0, 1) and list(single) == single.plan(0).tolist()


def test_bad_rank_is_refused():
    with pytest.raises(ConfigError, match="rank 2 of world size 2 is invalid"):
        build_sampler("instance", LABELS, rank=2, world_size=2)
