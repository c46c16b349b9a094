import numpy as np
import pytest

from tailtune.data.longtail import exp_profile, shot_groups, subsample, third_groups


@pytest.mark.parametrize("ir,total", [(100, 10847), (50, 12608), (10, 19573)])
def test_cifar100_lt_totals(ir, total):
    counts = exp_profile(500, 100, ir)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == int(500 / ir)


def test_fashion_mnist_profiles():
    assert exp_profile(6000, 10, 100) == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert sum(exp_profile(6000, 10, 100)) == 14886
    assert exp_profile(6000, 10, 1000) == [6000, 2784, 1292, 600, 278, 129, 60, 27, 12, 6]


def test_subsample_matches_the_legacy_global_rng_protocol():
    targets = np.repeat(np.arange(5), 30)
    np.random.default_rng(1).shuffle(targets)
    counts = [30, 20, 10, 5, 2]
    got = subsample(targets, counts, seed=0)
    # The benchmark's code seeds NumPy's global RNG with 0, then per class: shuffle, take the first n.
    state = np.random.get_state()
    try:
        np.random.set_state(np.random.RandomState(0).get_state())  # = seeding the global RNG with 0
        want = []
        for c, n in enumerate(counts):
            idx = np.where(targets == c)[0]
            np.random.shuffle(idx)
            want.append(idx[:n])
    finally:
        np.random.set_state(state)
    assert np.array_equal(got, np.concatenate(want))


def test_subsample_leaves_global_rng_alone():
    before = np.random.get_state()[1].copy()
    subsample([0, 0, 1, 1], [1, 1])
    assert np.array_equal(before, np.random.get_state()[1])


def test_shot_groups_thresholds():
    assert shot_groups([500, 101, 100, 20, 19, 5]).tolist() == [0, 0, 1, 1, 2, 2]


def test_third_groups_for_ten_classes():
    assert third_groups(exp_profile(6000, 10, 100)).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
