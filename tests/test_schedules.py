"""The learning-rate schedules' shapes over the planned epochs (kit/callbacks.py lr_schedule)."""

import types

import numpy as np
import pytest

from kit import callbacks, recipe

LR = 1e-3


def rates(kind, planned, epochs=None, warmup=2):
    planner = types.SimpleNamespace(planned_epochs=planned)
    schedule = callbacks.lr_schedule(LR, kind, planner, warmup)
    return np.array([schedule(e, None) for e in range(epochs or planned)])


def test_the_recipe_names_every_schedule():
    assert set(recipe.SCHEDULES) == set(callbacks.SCHEDULES)


def test_cosine_warms_up_then_decays_to_two_percent():
    lr = rates("cosine", 20, epochs=25)
    assert np.allclose(lr[:2], [LR / 2, LR])
    assert np.all(np.diff(lr[2:]) <= 0)
    assert lr.min() == pytest.approx(0.02 * LR) and lr[-1] == pytest.approx(0.02 * LR)


def test_constant_is_constant():
    assert np.allclose(rates("constant", 10), LR)


@pytest.mark.parametrize("planned", [5, 12, 20, 30, 61])
def test_restarts_warm_up_then_restart_at_the_peak_in_doubling_cycles(planned):
    lr = rates("restarts", planned, epochs=planned + 3)
    assert np.allclose(lr[:2], [LR / 2, LR])  # the cosine's warm-up
    cycles = callbacks.restart_cycles(planned - 2)
    assert sum(cycles) == planned - 2
    assert all(b >= 2 * a for a, b in zip(cycles, cycles[1:]))  # each at least twice the last
    starts = 2 + np.cumsum([0] + cycles[:-1])
    ends = starts + np.array(cycles) - 1
    assert np.allclose(lr[starts], LR)  # every cycle starts at the peak
    assert np.allclose(lr[ends], 0.02 * LR)  # and ends at the floor
    rises = [e for e in range(1, planned) if lr[e] > lr[e - 1] + 1e-12]
    assert rises == [1] + list(starts[1:])  # the warm-up, then only the restarts
    assert lr.min() >= 0.02 * LR * (1 - 1e-9)  # never below the floor, past the plan included


def test_restarts_with_a_planned_30_epochs_restart_at_6_and_14():
    assert callbacks.restart_cycles(28) == [4, 8, 16]
    lr = rates("restarts", 30)
    assert [e for e in range(1, 30) if lr[e] > lr[e - 1]] == [1, 6, 14]


@pytest.mark.parametrize("planned, peak", [(11, 3), (21, 6), (30, 9), (2, 0)])
def test_onecycle_rises_for_30_percent_then_falls_to_lr_over_1e4(planned, peak):
    lr = rates("onecycle", planned, epochs=planned + 3)
    assert int(np.argmax(lr)) == peak and lr[peak] == pytest.approx(LR)
    if peak:
        assert lr[0] == pytest.approx(LR / 25)
    assert np.all(np.diff(lr[:peak + 1]) > 0) and np.all(np.diff(lr[peak:]) <= 0)
    assert lr[planned - 1] == pytest.approx(LR * 1e-4)
    assert lr.min() >= LR * 1e-4 * (1 - 1e-9)


def test_a_replanned_run_bends_the_schedule():
    planner = types.SimpleNamespace(planned_epochs=10)
    schedule = callbacks.lr_schedule(LR, "onecycle", planner)
    early = schedule(3, None)
    planner.planned_epochs = 40
    assert schedule(3, None) < early  # still rising towards a later peak
