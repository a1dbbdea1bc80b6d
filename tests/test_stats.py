import numpy as np
import pytest

from edgecnn import stats


def test_mcnemar_exact_matches_the_binomial_test():
    # scipy.stats.binomtest(2, 12, 0.5).pvalue == 0.03857421875
    assert stats.mcnemar_exact(10, 2) == pytest.approx(0.03857421875, abs=1e-12)
    assert stats.mcnemar_exact(2, 10) == stats.mcnemar_exact(10, 2)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert 0 < stats.mcnemar_exact(900, 1000) < 0.05  # large n stays finite and exact


def test_flips_and_per_class_delta_on_hand_made_predictions():
    y = np.array([0, 0, 1, 1, 2, 2])
    ref = np.array([0, 0, 1, 0, 2, 1])  # 4 correct
    new = np.array([0, 1, 1, 1, 2, 2])  # 5 correct: one good->bad (idx 1), two bad->good (idx 3, 5)
    assert stats.flips(y, ref, new) == (1, 2)
    delta = stats.per_class_delta(y, ref, new, 3)
    assert delta.tolist() == pytest.approx([-50.0, 50.0, 50.0])


def test_compare_to_reference_columns():
    y = np.array([0, 1, 2, 0])
    ref = np.eye(3)[[0, 1, 2, 1]] * 0.9 + 0.1 / 3
    same = stats.compare_to_reference(y, ref, ref, ["a", "b", "c"])
    assert same["agreement"] == 1.0 and same["drop_pp"] == 0 and same["kl"] == pytest.approx(0, abs=1e-9)
    assert same["mcnemar_p"] == 1.0
    worse = np.eye(3)[[1, 1, 2, 1]] * 0.9 + 0.1 / 3
    r = stats.compare_to_reference(y, ref, worse, ["a", "b", "c"])
    assert r["accuracy"] == 0.5 and r["drop_pp"] == pytest.approx(25.0) and r["flips_bad"] == 1
    assert r["worst_class"] == "a" and r["worst_class_delta_pp"] == pytest.approx(-50.0) and r["kl"] > 0.5


def test_latency_summary():
    s = stats.latency_summary([0.001] * 98 + [0.002, 0.010])
    assert s["latency_ms_p50"] == pytest.approx(1.0) and s["latency_ms_min"] == pytest.approx(1.0)
    assert s["latency_ms_p99"] > 1.9 and s["latency_runs"] == 100
