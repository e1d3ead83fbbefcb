"""flatbook.bounds split into modules of one concept each: every public name is still
importable from ``flatbook.bounds`` (the very object its module defines), the option records
of ``t6_construction`` and ``chain.corollary`` give the same numbers as the keyword form and
refuse unknown keywords, and the traceability call graph follows the re-exports."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from flatbook import bounds, chain, curvature, geometry, tight, traceability
from flatbook.bounds_t6 import T6Options
from flatbook.chain import CorollaryOptions

ROOT = Path(__file__).resolve().parents[1]

#: the names of flatbook.bounds.__all__ before the split (chapters call them as bounds.X)
PUBLIC = ["Bound", "Identity", "Quantities", "SharedWeightTerms",
          "T6Network", "adaptive_sharpness", "all_bounds", "kappa", "l1_identity", "l2_bound",
          "l2_identity", "l3_bound", "mean_square_lr", "quantities",
          "relative_flatness", "sgd_p", "shared_weight_terms", "t1_min", "t1_per_sample",
          "t1_weighted", "t2_gm", "t2_min", "t2_per_sample", "t3_gm", "t3_min", "t3_weighted",
          "t4_nmls", "t4_nvr", "t5_identity", "t5_lvr", "t5_mls", "t6_construction", "t7_gd",
          "t7_sgd", "t7_sgd_mean_square"]


def test_every_public_name_is_reexported_from_its_defining_module() -> None:
    assert set(PUBLIC) <= set(bounds.__all__)
    assert bounds.KAPPA_METHODS == ("hessian", "laplacian", "gn")  # public, not in __all__
    assert callable(bounds.probe_quantities) and bounds.Number is not None
    for name in bounds.__all__:
        obj = getattr(bounds, name)
        module = getattr(obj, "__module__", None)
        if module is not None and module.startswith("flatbook.bounds_"):
            assert getattr(importlib.import_module(module), name) is obj, name


def test_bounds_modules_and_chain_meet_the_house_rules() -> None:
    spec = importlib.util.spec_from_file_location("house_rules",
                                                  ROOT / "scripts" / "house_rules.py")
    assert spec is not None and spec.loader is not None
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    files = sorted((ROOT / "flatbook").glob("bounds*.py")) + [ROOT / "flatbook" / "chain.py"]
    assert len(files) >= 8
    assert [o for f in files for o in rules.offences(f, 60, 8, 600)] == []


def test_t6_options_record_equals_the_keyword_and_positional_forms() -> None:
    kw = dict(d=5, k=3, depth=3, width=6, n=7, seed=2)
    a = bounds.t6_construction(2.0, 1.7, **kw)
    forms = [bounds.t6_construction(2.0, 1.7, options=T6Options(**kw)),
             bounds.t6_construction(2.0, 1.7, 5, 3, 3, 6, 7, 2),
             bounds.t6_construction(2.0, 1.7, options=T6Options(d=5, k=3), depth=3, width=6,
                                    n=7, seed=2)]
    for b in forms:
        assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
        assert torch.equal(a.sigma, b.sigma)
        for wa, wb in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(wa, wb)
    # the construction still does what it claims: tr H (= GN trace at L = 0) and LD prescribed
    assert math.isclose(float(curvature.gn_trace(a.model, a.X)), 2.0, rel_tol=1e-10)
    J = geometry.input_jacobian(a.model, a.X)
    assert torch.allclose(geometry.measures(J).ld, torch.full((7,), 1.7, dtype=torch.float64),
                          rtol=1e-9)


def test_t6_unknown_keyword_and_mixed_forms_are_type_errors() -> None:
    with pytest.raises(TypeError, match="'widht'.*allowed.*width"):
        bounds.t6_construction(1.0, 2.0, widht=5)
    with pytest.raises(TypeError, match="both positionally and as a keyword"):
        bounds.t6_construction(1.0, 2.0, 4, d=4)
    with pytest.raises(TypeError, match="options must be a T6Options"):
        bounds.t6_construction(1.0, 2.0, options={"d": 4})
    with pytest.raises(ValueError, match="depth"):
        bounds.t6_construction(1.0, 2.0, options=T6Options(depth=0))


def test_corollary_options_record_equals_the_keyword_form() -> None:
    tc = tight.isotropic_linear()
    a = chain.corollary(tc.model, tc.X, tc.Y, tc.lr, tc.batch_size, n_hvp=12, seed=1, z=2.0)
    b = chain.corollary(tc.model, tc.X, tc.Y, tc.lr, tc.batch_size,
                        options=CorollaryOptions(n_hvp=12, seed=1, z=2.0))
    assert a.trace_hessian == b.trace_hessian and a.trace_hessian_se == b.trace_hessian_se
    assert a.lvr.lhs == b.lvr.lhs and a.lvr.rhs == b.lvr.rhs
    assert a.steps_mls == b.steps_mls and a.interpolation == b.interpolation
    # the equality case of the volume form: slack 1, and the steps multiply to it
    assert a.lvr.slack == pytest.approx(1.0, rel=1e-9)
    assert chain.budget(a.steps_lvr) == pytest.approx(a.lvr.slack, rel=1e-12)
    with pytest.raises(TypeError, match="'nhvp'.*allowed.*n_hvp"):
        chain.corollary(tc.model, tc.X, tc.Y, tc.lr, tc.batch_size, nhvp=12)
    c = chain.corollary(tc.model, tc.X, tc.Y, tc.lr, tc.batch_size,
                        options=CorollaryOptions(n_hvp=12, z=2.0), seed=1)  # keyword replaces
    assert c.trace_hessian == a.trace_hessian and c.interpolation == a.interpolation


def test_call_graph_follows_reexports(tmp_path: Path) -> None:
    pkg = tmp_path / "flatbook"
    pkg.mkdir()
    (pkg / "parts.py").write_text("def inner():\n    return 1\n\n\n"
                                  "def outer():\n    return inner()\n")
    (pkg / "face.py").write_text("from flatbook.parts import inner, outer\n")
    graph = traceability.package_calls(pkg)
    reached = traceability._closure({"flatbook.face.outer"}, graph)
    assert "flatbook.face.inner" in reached  # the public name of the function outer calls
    assert "flatbook.face.outer" not in traceability._closure({"flatbook.face.inner"}, graph)
