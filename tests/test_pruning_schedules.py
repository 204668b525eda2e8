"""Schedules: the cubic formula, IMP fractions, defaults that fit the run, bad input."""

import pytest

from hf_bigsmall import MagnitudePruningCallback
from hf_bigsmall.pruning.config import PruningConfig
from hf_bigsmall.pruning.schedules import build_schedule


def test_cubic_schedule_follows_zhu_and_gupta():
    schedule = build_schedule(
        PruningConfig(target_sparsity=0.8, initial_sparsity=0.1, schedule="cubic", start_step=10, end_step=50,
                      pruning_frequency=10), max_steps=100,
    )
    assert schedule.pruning_steps() == [10, 20, 30, 40, 50]
    n_dt = 40
    for t in range(10, 51):
        expected = 0.8 + (0.1 - 0.8) * (1 - (t - 10) / n_dt) ** 3
        assert schedule.sparsity_at(t) == pytest.approx(expected)
    assert schedule.sparsity_at(5) == 0.0
    assert schedule.sparsity_at(80) == pytest.approx(0.8)


def test_linear_and_one_shot():
    linear = build_schedule(PruningConfig(target_sparsity=0.6, schedule="linear", end_step=6, pruning_frequency=2), 10)
    assert [linear.sparsity_at(t) for t in linear.pruning_steps()] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    one_shot = build_schedule(PruningConfig(target_sparsity=0.6, schedule="one_shot"), 10)
    assert one_shot.pruning_steps() == [0] and one_shot.sparsity_at(0) == 0.6


def test_imp_rounds_remove_the_same_fraction_of_what_remains():
    schedule = build_schedule(PruningConfig(target_sparsity=0.875, schedule="imp", imp_rounds=3), max_steps=40)
    assert schedule.steps_per_round == 10 and schedule.pruning_steps() == [10, 20, 30]
    assert schedule.prune_fraction_per_round == pytest.approx(0.5)
    assert [schedule.sparsity_at(t) for t in (0, 10, 20, 30, 39)] == pytest.approx([0, 0.5, 0.75, 0.875, 0.875])


@pytest.mark.parametrize("max_steps", [1, 2, 5, 8, 100, 1000])
def test_default_schedule_fits_the_run(max_steps):
    schedule = build_schedule(PruningConfig(target_sparsity=0.7), max_steps=max_steps)
    last = schedule.pruning_steps()[-1]
    assert last <= max_steps
    assert schedule.sparsity_at(last) == pytest.approx(0.7)
    assert "cubic" in schedule.describe()


def test_schedule_ending_after_max_steps_is_an_error():
    with pytest.raises(ValueError, match="max_steps=10"):
        build_schedule(PruningConfig(end_step=20), max_steps=10)
    with pytest.raises(ValueError, match="IMP"):
        build_schedule(PruningConfig(schedule="imp", imp_rounds=5, steps_per_round=4), max_steps=10)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"target_sparsity": 1.0}, ValueError),
        ({"target_sparsity": -0.1}, ValueError),
        ({"target_sparsity": "half"}, TypeError),
        ({"schedule": "exponential"}, ValueError),
        ({"structure": "blocks"}, ValueError),
        ({"scope": "model"}, ValueError),
        ({"schedule": "imp", "structure": "neurons"}, ValueError),
        ({"pruning_frequency": 0}, ValueError),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        MagnitudePruningCallback(**kwargs)
