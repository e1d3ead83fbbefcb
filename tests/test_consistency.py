"""The across-settings rule of ``consistency`` (row ``signs``): its statistics on simulated
per-setting intervals, and the whole path on simulated studies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flatbook.analysis import across_settings as C
from flatbook.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, REPRODUCED

Z = 1.959963984540054


def _part(est: float) -> dict[str, float]:
    """A statistic estimated at ``est`` (in standard errors), its 95 % interval."""
    return {"effect": est, "lo": est - Z, "hi": est + Z}


def _table(rng: np.random.Generator, means: dict[str, np.ndarray]) -> dict:
    """setting → measure → parts; ``means[m]`` [settings, 2]: true coupling and level
    effects (in standard errors); estimates are the means plus N(0, 1) noise."""
    n_set = next(iter(means.values())).shape[0]
    return {f"s{i}": {m: {s: _part(float(mu[i, j] + rng.standard_normal()))
                          for j, s in enumerate(C.STATISTICS)}
                      for m, mu in means.items()}
            for i in range(n_set)}


def _rate(draw, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Fraction of ``n`` draws whose verdict is reproduced, and its standard error."""
    rng = np.random.default_rng(seed)
    k = sum(C.consistency_verdict(_table(rng, draw(rng)))[0] == REPRODUCED for _ in range(n))
    r = k / n
    return r, math.sqrt(max(r * (1 - r), 1e-12) / n)


def _others(rng: np.random.Generator, n_set: int) -> dict[str, np.ndarray]:
    return {m: np.zeros((n_set, 2)) for m in ("LVR", "NMLS", "NVR")}


@pytest.mark.parametrize("n_set", [2, 3])
def test_common_positive_mls_effect_is_reproduced_at_high_rate(n_set: int) -> None:
    """A common positive MLS effect (4.5 SE in coupling and level, every setting): reproduced
    at the rule's exact power, the product of the 2k intervals' chances to exclude 0."""
    from scipy import stats

    r, se = _rate(lambda rng: {"MLS": np.full((n_set, 2), 4.5)} | _others(rng, n_set))
    power = stats.norm.cdf(4.5 - Z) ** (2 * n_set)   # every one of the 2·k intervals > 0
    assert r > 0.9 and abs(r - power) < 4 * se + 0.005


def test_no_effect_anywhere_is_rarely_reproduced_or_contradicted() -> None:
    """No effect of any measure in 2 settings: reproduced and contradicted < 1 % each."""
    rng = np.random.default_rng(1)
    out = [C.consistency_verdict(_table(rng, {"MLS": np.zeros((2, 2))} | _others(rng, 2)))[0]
           for _ in range(2000)]
    assert out.count(REPRODUCED) / 2000 < 0.01 and out.count(CONTRADICTED) / 2000 < 0.01


def test_independent_signs_across_settings_and_statistics_null() -> None:
    """Null: in each of the study's 3 settings the coupling and the level effect of MLS are
    each drawn +4 or −4 SE independently; a consistent positive MLS is then a coincidence
    (probability 2^−6 at full power)."""
    def draw(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"MLS": 4.0 * rng.choice([-1.0, 1.0], size=(3, 2))} | _others(rng, 3)
    r, se = _rate(draw)
    assert r <= 0.05 + 2 * se


def test_one_null_setting_among_positive_ones_is_reproduced_at_most_at_alpha() -> None:
    """Least favourable null: MLS truly positive in every setting but one, where it is 0."""
    def draw(rng: np.random.Generator) -> dict[str, np.ndarray]:
        mu = np.full((3, 2), 4.0)
        mu[rng.integers(3)] = 0.0
        return {"MLS": mu} | _others(rng, 3)
    r, se = _rate(draw)
    assert r <= 0.05 + 2 * se


@pytest.mark.parametrize("n_set", [2, 3])
def test_a_sign_shared_per_setting_but_random_across_settings_is_reproduced_2_to_minus_k(
        n_set: int) -> None:
    """A limit of the rule, stated: when each setting's MLS effect is drawn ± once (coupling
    and level share it), all settings are positive with probability 2^−k, so the literal rule
    says reproduced ≈ 2^−k × power^(2k) of the time — 25 % with 2 settings. Only ≥ 5 settings
    bring that null to ≤ 5 %."""
    def draw(rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = rng.choice([-1.0, 1.0], size=(n_set, 1))
        return {"MLS": np.repeat(6.0 * s, 2, axis=1)} | _others(rng, n_set)
    r, se = _rate(draw)
    assert abs(r - 2.0 ** -n_set) < 4 * se + 0.01


def test_rule_cases_and_ties() -> None:
    """One setting: not tested; a tie with another measure: reproduced; a setting without
    agreement: inconclusive; MLS negative in both statistics: contradicted."""
    pos, neg, nul = _part(5.0), _part(-5.0), _part(0.0)
    both = {"coupling": pos, "level": pos}

    def tab(mls: list[dict], lvr: list[dict]) -> dict:
        pairs = enumerate(zip(mls, lvr, strict=True))
        return {f"s{i}": {"MLS": a, "LVR": b} for i, (a, b) in pairs}
    assert C.consistency_verdict(tab([both], [both]))[0] == NOT_TESTED
    v, signs, _ = C.consistency_verdict(tab([both, both], [both, both]))
    assert v == REPRODUCED and signs == {"MLS": [1, 1], "LVR": [1, 1]}    # a tie
    mixed = {"coupling": pos, "level": nul}
    assert C.consistency_verdict(tab([both, mixed], [both, both]))[0] == INCONCLUSIVE
    assert C.consistency_verdict(tab([both, {"coupling": pos, "level": neg}],
                                     [both, both]))[1]["MLS"] == [1, 0]
    assert C.consistency_verdict(tab([both, {"coupling": neg, "level": neg}],
                                     [both, both]))[0] == CONTRADICTED
    assert C.agreement_sign({"lo": math.nan, "hi": math.nan}) == 0


def _study(seed: int, name: str, couple: float):
    """A simulated study whose log MLS is ``couple`` × log tr H plus independent noise
    (other measures absent: their parts are not tested)."""
    from types import SimpleNamespace

    from flatbook.analysis.calibration import simulated_study

    st = simulated_study(n_runs=12, n_measure=16, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for tr in st.trajectories:
        lt = np.log(tr["trace_gn"])
        tr["mls_median"] = np.exp(couple * lt + 0.05 * rng.standard_normal(lt.shape))
    st.setting = SimpleNamespace(independent=True, name=name)
    return st


def test_evaluate_consistency_on_simulated_studies() -> None:
    """The whole path on two simulated studies whose MLS follows tr H: reproduced; absent
    measures have sign 0; one study: not tested; bad input named."""
    from flatbook.analysis.scoring import Options

    o = Options(n_flip=200, n_perm=200, n_factor=200)
    studies = [_study(1, "a", 1.0), _study(2, "b", 1.0)]
    out = C.evaluate_consistency(studies, options=o, threshold=1e-2)
    assert out["settings"] == ["a", "b"] and out["signs"]["MLS"] == [1, 1]
    assert out["verdict"] == REPRODUCED and out["signs"]["NVR"] == [0, 0]
    assert out["table"][0] == {"measure": "MLS", "`a`": "+", "`b`": "+", "agrees in": "2"}
    assert C.evaluate_consistency(studies[:1], options=o, threshold=1e-2)["verdict"] == NOT_TESTED
    with pytest.raises(ValueError, match="different settings"):
        C.evaluate_consistency([studies[0], studies[0]], options=o)
    with pytest.raises(TypeError, match="sequence of Study"):
        C.evaluate_consistency(studies[0], options=o)


def test_mls_parts_are_the_per_setting_scorings() -> None:
    """MLS's coupling and level parts are compression_v3's essential rows, same numbers."""
    from flatbook.analysis.scoring import Options, score_some

    o = Options(n_flip=200, n_perm=200, n_factor=200)
    st = _study(3, "a", 0.5)
    for tr in st.trajectories:
        tr["nmls"], tr["nvr"] = tr["mls_median"] * 2.0, tr["mls_median"] * 3.0
    mine = C.measure_parts(st, o, threshold=1e-2)["MLS"]
    ref = {q["name"]: q for q in score_some(st, ["compression_v3"], options=o,
                                            threshold=1e-2)[0]["parts"]}
    for stat, row in (("coupling", "coupling_mls"), ("level", "level_mls")):
        for k in ("effect", "lo", "hi", "p", "n", "verdict"):
            assert mine[stat][k] == ref[row][k], (stat, k)
