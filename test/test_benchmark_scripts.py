"""The helpers of the benchmark scripts in ``benchmarks/`` that choose what a sweep runs."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from refine_inner_sweep import view_order  # noqa: E402


@pytest.mark.parametrize("spec", ["sequential", "reverse", "golden", "random:3"])
def test_view_orders_are_permutations(spec):
    for n in (1, 2, 25):
        order = view_order(spec, n)
        assert sorted(order) == list(range(n))


def test_view_orders_differ_as_named():
    assert view_order("sequential", 5) == [0, 1, 2, 3, 4]
    assert view_order("reverse", 5) == [4, 3, 2, 1, 0]
    g = view_order("golden", 25)
    # consecutive updates are spread over the arc, not neighbours
    assert min(abs(a - b) for a, b in zip(g, g[1:])) >= 5
    assert view_order("random:1", 25) == view_order("random:1", 25) != view_order("random:2", 25)


def test_unknown_view_order_is_named_in_the_error():
    with pytest.raises(ValueError, match="spiral"):
        view_order("spiral", 4)
