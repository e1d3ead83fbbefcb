"""The generic validators of ``flatbook._validate``: each accepts exactly the values it names
(numpy integers too, never a bool) and refuses the rest with a ValueError naming the
parameter."""

from __future__ import annotations

import numpy as np
import pytest

from flatbook import _validate as V


def test_check_int_bounds_and_types() -> None:
    assert V.check_int(2, "n", 2) == 2 and V.check_int(np.int64(5), "n") == 5
    assert type(V.check_int(np.int64(5), "n")) is int
    for bad in (1, True, 2.0, "3", None):
        with pytest.raises(ValueError, match=r"^n must be an integer ≥ 2; got"):
            V.check_int(bad, "n", 2)


def test_check_positive_int_and_seed() -> None:
    assert V.check_positive_int(None, "n_test", allow_none=True) is None
    with pytest.raises(ValueError, match="n_test must be a positive integer or None"):
        V.check_positive_int(0, "n_test", allow_none=True)
    with pytest.raises(ValueError, match="must be a positive integer; got 3.0"):
        V.check_positive_int(3.0, "k")
    assert V.check_seed(0) == 0 and V.check_seed(2**63 - 1) == 2**63 - 1
    for bad in (-1, 2**63, False, 1.0):
        with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.2\*\*63-1"):
            V.check_seed(bad)


def test_check_positive_float_and_fraction() -> None:
    assert V.check_positive_float(3, "lr") == 3.0
    for bad in (0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            V.check_positive_float(bad, "lr")
    assert V.check_fraction(0.25, "f") == 0.25
    for bad in (0, 1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"^f must be a number in \(0, 1\) \(the share\)"):
            V.check_fraction(bad, "f", " (the share)")
    with pytest.raises(ValueError, match=r"rel_tol must be a number in \(0, 1\) \(a relative"):
        V.fraction(2.0, "rel_tol", {})


def test_check_choice_lists_the_allowed_values() -> None:
    assert V.check_choice("b", "mode", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"unknown mode 'c'; allowed: \['a', 'b'\]"):
        V.check_choice("c", "mode", ("a", "b"))


def test_check_classes_with_and_without_the_label_count() -> None:
    assert V.check_classes(None) is None
    assert V.check_classes(np.int64(3)) == 3 and V.check_classes([7, np.int64(1)]) == (7, 1)
    assert V.check_classes([12, 40]) == (12, 40)  # no label count: only ≥ 0 is checked
    assert V.classes([3, 4], "classes", {}) == (3, 4)  # the run-parameter validator
    cases = [(11, r"classes=11 must be a count ≥ 2 and ≤ 10 \(labels 0\.\.9\)"),
             (1, r"classes=1 must be a count ≥ 2 and ≤ 10"),
             ([1], r"classes must name ≥ 2 labels"),
             ([1, 1], r"classes has duplicates: \[1, 1\] \(labels must be distinct\)"),
             ([3, 12], r"classes \[12\] out of range; allowed: labels in 0\.\.9"),
             ("12", r"classes must be None, a count, or a list of labels in 0\.\.9"),
             ([1.0, 2.0], r"classes must be integer labels in 0\.\.9"),
             (True, r"classes must be None, a count")]
    for value, match in cases:
        with pytest.raises(ValueError, match=match):
            V.check_classes(value, "classes", 10)
    with pytest.raises(ValueError, match=r"classes \[-1\] out of range; allowed: labels ≥ 0"):
        V.check_classes([-1, 2])
    with pytest.raises(ValueError, match=r"^classes=1 must be a count ≥ 2$"):
        V.check_classes(1)
