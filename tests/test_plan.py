"""The claims table (analysis plan) is well-formed, versioned and hashed."""

from __future__ import annotations

import pytest

from flatbook.analysis import plan as P


def test_every_row_has_a_known_kind_and_flags() -> None:
    keys = [c.key for c in P.CLAIM_SPECS]
    assert len(keys) == len(set(keys))
    for c in P.CLAIM_SPECS:
        assert c.rows and all(r.kind in P.KINDS for r in c.rows), c.key
        assert set(c.flags) <= set(P.FLAGS) and all(set(r.flags) <= set(P.FLAGS)
                                                     for r in c.rows)
        assert len({r.name for r in c.rows}) == len(c.rows), c.key
        assert all(r.direction in (-1, 0, 1) for r in c.rows)


def test_plan_says_what_claims_md_says() -> None:
    late = P.spec("late_fall")
    assert {r.name for r in late.essential_rows()} == {"lambda_max", "trace", "volume",
                                                       "coupling"}
    comp = P.spec("compression_v3")
    assert {r.name for r in comp.essential_rows()} == {"coupling_mls", "level_mls"}
    assert P.spec("ld_differs") is P.spec("ld")
    assert [r.name for r in P.spec("ld").essential_rows()] == ["independent"]
    assert P.spec("ld").rows[1].margin == 0.2
    assert P.HEADLINE == ("late_fall", "compression_v3", "lr_effect", "batch_effect",
                          "volume_after_plateau", "ld", "test_data")
    assert P.aliases()["test_sharpness_rises"] == "test_data"
    assert P.aliases()["lr_sharpness"] == P.aliases()["lr_compression"] == "lr_effect"
    assert "by design" in P.spec("stability").flags and "by design" in P.spec("zero_loss").flags
    assert P.PRIMARY_THRESHOLD == 1e-3 and P.MIN_WINDOW == 10
    with pytest.raises(ValueError, match="unknown claim"):
        P.spec("nope")


def test_change_log_lists_the_past_post_hoc_choices() -> None:
    text = " ".join(c.what for c in P.CHANGE_LOG)
    for must in ("λ_max made non-essential", "σ = 0.08", "1e-2", "plan v1"):
        assert must in text
    assert all(c.results_seen for c in P.CHANGE_LOG)


def test_hash_is_content_addressed() -> None:
    assert P.PLAN_HASH == P.plan_hash() and len(P.PLAN_HASH) == 16
    old = P.CLAIM_SPECS
    try:
        P.CLAIM_SPECS = old[:-1]
        assert P.plan_hash() != P.PLAN_HASH
    finally:
        P.CLAIM_SPECS = old


def test_headline_applies_holm_and_tables_carry_every_row() -> None:
    from flatbook.analysis import report_tables as RT

    part = {"essential": True, "what": "w", "kind": "trend", "n": 36, "effect": -0.1,
            "lo": -0.2, "hi": -0.05, "effect_sd": -0.6, "p": 0.01, "mde": 0.05,
            "mde_sd": 0.5, "verdict": "reproduced", "flags": []}
    claims = [{"key": k, "verdict": "reproduced", "holm_reject": k != "ld", "parts": [part],
               "flags": [], "version": "v1", "source": "abstract", "sureness": "paraphrase"}
              for k in P.HEADLINE]
    h = RT.headline(claims)
    assert "inconclusive: ld" in h and f"{len(P.HEADLINE)} essential tests" in h
    rows = RT.claim_rows(claims)
    assert len(rows) == len(P.HEADLINE) and rows[0]["MDE"] == "0.05 / 0.5 SD"
    assert [r["results seen"] for r in RT.change_log_rows()] == ["yes"] * len(P.CHANGE_LOG)
    assert P.PLAN_HASH in RT.plan_line()


def _plan_hash_at(commit: str) -> str | None:
    """PLAN_HASH of flatbook/analysis/plan.py as committed at ``commit`` (None without git
    or without that commit in this clone)."""
    import importlib.util
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    got = subprocess.run(["git", "show", f"{commit}:flatbook/analysis/plan.py"], cwd=root,
                         capture_output=True, text=True, check=False)
    if got.returncode != 0:
        return None
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "plan_at_commit.py"
        f.write_text(got.stdout, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("plan_at_commit", f)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod          # dataclasses look their module up
        try:
            spec.loader.exec_module(mod)
        finally:
            del sys.modules[spec.name]
        return str(mod.PLAN_HASH)


def test_frozen_plan_is_the_plan_in_use() -> None:
    """R9: once the freeze is recorded, the plan in use is the last recorded one (the freeze,
    or its last amendment), and the plan file at each recorded commit has that commit's hash."""
    history = P.plan_history()
    if history[0]["commit"] is None:
        assert P.frozen_line() == "not yet frozen"
        pytest.skip("the plan is not yet frozen (FROZEN['commit'] is None)")
    assert history[-1]["plan_hash"] == P.PLAN_HASH, \
        "the plan changed after its freeze: record it in CHANGE_LOG and in AMENDED, or " \
        "restore the recorded table"
    for rec in history:
        at = _plan_hash_at(rec["commit"])
        if at is not None:
            assert at == rec["plan_hash"], \
                f"plan.py at {rec['commit']} has hash {at}, the record says {rec['plan_hash']}"
        assert rec["commit"][:12] in P.frozen_line()
    assert "changed since" not in P.frozen_line()


def test_frozen_line_says_when_the_plan_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "AMENDED", ())
    monkeypatch.setattr(P, "FROZEN", {"commit": "0123456789abcdef", "plan_hash": "x" * 16})
    assert "0123456789ab" in P.frozen_line() and "changed since" in P.frozen_line()
    monkeypatch.setattr(P, "FROZEN", {"commit": "0123456789abcdef", "plan_hash": P.PLAN_HASH})
    assert "changed since" not in P.frozen_line()
    monkeypatch.setattr(P, "AMENDED", ({"commit": "fedcba9876543210", "plan_hash": "y" * 16,
                                        "why": "w"},))
    assert "fedcba987654" in P.frozen_line() and "changed since" in P.frozen_line()


def test_plan_hash_at_head_is_readable() -> None:
    """The git check of the freeze test can read a committed plan (HEAD's, which may differ
    from the working tree's while editing)."""
    h = _plan_hash_at("HEAD")
    if h is None:
        pytest.skip("no git checkout")
    assert len(h) == 16
