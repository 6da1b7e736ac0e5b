"""The timing harness: interleaving, warm-up, medians, spreads and ratios (fake contenders, no timing asserted)."""
import pytest

from bench.harness import Contender, Pair, Sample, compare, measure


def _fixed(log, name, seconds):
    """A contender that records its calls and reports 10 images in the next of `seconds`."""
    it = iter(seconds)

    def run():
        log.append(name)
        return Sample(10, next(it))

    return Contender(name, f"fake {name}", run)


def test_rounds_interleave_after_warmup_and_medians_come_from_timed_rounds_only():
    log = []
    a = _fixed(log, "a", [100.0, 1.0, 2.0, 4.0])  # the warm-up round (100 s) must not count
    b = _fixed(log, "b", [100.0, 5.0, 5.0, 10.0])
    m = measure([a, b], repeats=3, warmup=1, label="t", progress=False)
    assert log == ["a", "b"] * 4
    assert m["a"].rates == [10.0, 5.0, 2.5]
    assert m["a"].median == 5.0 and m["a"].spread == (2.5, 10.0)
    assert m["b"].median == 2.0 and m["b"].spread == (1.0, 2.0)
    (r,) = compare("s", m, [Pair("a", "b", goal=3.0)])
    assert (r.stage, r.name, r.baseline, r.goal, r.repeats) == ("s", "a", "b", 3.0, 3)
    assert r.ratio == pytest.approx(2.5)
    assert r.img_per_s == 5.0 and r.baseline_img_per_s == 2.0
    assert r.data_wait is None


def test_data_wait_is_the_median_fraction():
    runs = iter([Sample(4, 2.0, 0.5), Sample(4, 2.0, 1.0), Sample(4, 1.0, 0.9)])
    m = measure([Contender("x", "x", lambda: next(runs))], repeats=3, warmup=0, label="t", progress=False)
    assert m["x"].data_wait == pytest.approx(0.5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="images >= 1"):
        Sample(0, 1.0)
    with pytest.raises(ValueError, match="wait_seconds"):
        Sample(1, 1.0, 2.0)
    c = Contender("a", "a", lambda: Sample(1, 1.0))
    with pytest.raises(ValueError, match="unique"):
        measure([c, c], repeats=1, warmup=0, label="t", progress=False)
    m = measure([c], repeats=1, warmup=0, label="t", progress=False)
    with pytest.raises(KeyError, match="'b', which was not measured"):
        compare("s", m, [Pair("a", "b")])
