"""Mutation harness: plant small errors in the statements the book checks; see which checks fail.

Each mutant edits one line of a *temporary copy* of the ``flatbook`` package (a right-hand side
2 % tighter or 1.5× looser, a measure 2 % off, a constant changed), then executes the chapters
that check the mutated statement at their fast parameters (converted once with
``scripts/prepare_fast_book.py``) and the package's tight-case tests against that copy. A
mutant is *caught* when at least one chapter check fails; the table lists, per mutant, the
first failing assert of each chapter (a notebook stops at its first error) and the tests that
fail. The working tree is never modified.

Usage:
    .venv/bin/python scripts/mutants.py --list              # mutants and a time estimate
    .venv/bin/python scripts/mutants.py t1_weighted_tight   # one (or several) mutants
    .venv/bin/python scripts/mutants.py --all               # every mutant, one after another
    .venv/bin/python scripts/mutants.py --all --jobs 2      # in parallel (separate temp dirs)

With ``--all`` (or ``--baseline``) every chapter first runs on the unmutated package: a chapter
that fails there would make "caught" meaningless (exit status 2). Exit status 0 iff every
mutant run is caught by at least one chapter check. A mutant whose
anchor text is not found exactly once in the package reports "stale" (the code moved on: update
its anchor).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: rough fast-parameter execution time of each chapter on one idle core (s), for --list
CHAPTER_SECONDS = {"ch01_hessian": 15, "ch02_stability": 60, "ch03_input_smoothness": 25,
                   "ch04_volume": 25, "ch05_mls_network": 15, "ch06_local_dim": 20,
                   "ch07_invariance": 15, "ch08_shared_weights": 25, "ch09_capstone": 20,
                   "chain_card": 20}
TEST_SECONDS = 8


@dataclass(frozen=True)
class Mutant:
    """One planted error: replace ``old`` (must occur exactly once) by ``new`` in ``path``.

    ``chapters``: the chapters (book/ names without .md) that check the statement;
    ``tests``: pytest node ids (relative to the repository) run against the mutated copy.
    """

    name: str
    what: str
    path: str
    old: str
    new: str
    chapters: tuple[str, ...]
    tests: tuple[str, ...] = ("tests/test_tight.py",)


# the modules of flatbook.bounds that compute the mutated statements
BT = "flatbook/bounds_theorems.py"  # L2, L3, T1–T5 from the quantities
BH = "flatbook/bounds_hessian.py"  # adaptive sharpness
BSEQ = "flatbook/bounds_sequential.py"  # κ_l by its definition, shared weights
BST = "flatbook/bounds_stability.py"  # T7
MUTANTS: tuple[Mutant, ...] = (
    Mutant("gn_trace", "Gauss–Newton trace (L1's right side) 2 % off", "flatbook/jacobians.py",
           "    return torch.stack(list(sq.values())).sum(0).mean()\n",
           "    return 1.02 * torch.stack(list(sq.values())).sum(0).mean()\n",
           ("ch01_hessian",)),
    Mutant("l3_block_loose", "L3: Σ_l ‖∇_{W_l} f‖² 2 % smaller (looser)", BT,
           "    lhs = torch.stack(list(q.grad_w_sqnorm.values())).sum(0)\n",
           "    lhs = 0.98 * torch.stack(list(q.grad_w_sqnorm.values())).sum(0)\n",
           ("ch03_input_smoothness",)),
    Mutant("t1_weighted_tight", "T1 weighted: rhs 2 % tighter", BT,
           '        lm.weight_norm**2 * q.trace,\n        "(1/n) Σ ‖x_i‖² ‖J_x(x_i)‖_F² ≤',
           '        0.98 * lm.weight_norm**2 * q.trace,\n        "(1/n) Σ ‖x_i‖² ‖J_x(x_i)‖_F² ≤',
           ("ch03_input_smoothness",)),
    Mutant("t1_min_loose", "T1 min form: rhs 1.5× looser", BT,
           "        lm.weight_norm**2 * q.trace / q.x_sqnorm.min(),\n        \"(1/n) Σ ‖J_x",
           "        1.5 * lm.weight_norm**2 * q.trace / q.x_sqnorm.min(),\n        \"(1/n) Σ ‖J_x",
           ("ch03_input_smoothness",)),
    Mutant("l2_bound_loose", "L2 inequality: rhs 1.5× looser", BT,
           "        lm.weight_norm * q.grad_w_sqnorm[layer].sqrt(),",
           "        1.5 * lm.weight_norm * q.grad_w_sqnorm[layer].sqrt(),",
           ("ch03_input_smoothness",)),
    Mutant("t2_gm_tight", "T2 GM form: rhs 2 % tighter", BT,
           "        lm.weight_norm**2 * q.trace / (r * _gm(q.x_sqnorm)),",
           "        0.98 * lm.weight_norm**2 * q.trace / (r * _gm(q.x_sqnorm)),",
           ("ch04_volume",)),
    Mutant("t2_sample_loose", "T2 per sample: rhs 1.5× looser", BT,
           "        (lm.weight_norm**2 * gw / (r * q.x_sqnorm)).pow(r / 2),",
           "        1.5 * (lm.weight_norm**2 * gw / (r * q.x_sqnorm)).pow(r / 2),",
           ("ch04_volume",)),
    Mutant("t2_min_loose", "T2 v1 min form: rhs 2 % looser", BT,
           "        (q.n * lm.weight_norm**2 * q.trace / (r * q.x_sqnorm.min())).pow(r),",
           "        1.02 * (q.n * lm.weight_norm**2 * q.trace / (r * q.x_sqnorm.min())).pow(r),",
           ("ch04_volume",)),
    Mutant("lvr_measure", "LVR measure 2 % off (log LVR + log 1.02)", "flatbook/geometry.py",
           "        log_lvr=_log_lvr_from_sigma(sigma, (N, d), rtol),",
           "        log_lvr=_log_lvr_from_sigma(sigma, (N, d), rtol) + math.log(1.02),",
           ("ch04_volume",)),
    Mutant("t3_gm_loose", "T3 GM form: rhs 2 % looser", BT,
           "        lm.weight_norm**2 * q.trace / _gm(q.x_sqnorm),\n        \"GM_i MLS",
           "        1.02 * lm.weight_norm**2 * q.trace / _gm(q.x_sqnorm),\n        \"GM_i MLS",
           ("ch05_mls_network",)),
    Mutant("nmls_tight", "T4 NMLS: lhs 2 % larger (a normalisation off)", BT,
           "        ((lm.h_sqnorm * lm.measures.mls**2) / lm.weight_norm**2).mean()",
           "        1.02 * ((lm.h_sqnorm * lm.measures.mls**2) / lm.weight_norm**2).mean()",
           ("ch05_mls_network",)),
    Mutant("nvr_loose", "T4 NVR: lhs 2 % smaller (looser)", BT,
           "        (lm.measures.r * lm.h_sqnorm * lm.measures.lvr_pow / lm.weight_norm**2).mean()",
           "        0.98 * (lm.measures.r * lm.h_sqnorm * lm.measures.lvr_pow / lm.weight_norm**2)"
           ".mean()",
           ("ch05_mls_network",)),
    Mutant("mls_measure", "MLS measure 2 % off", "flatbook/geometry.py",
           "        mls=sigma[:, 0],", "        mls=1.02 * sigma[:, 0],",
           ("ch05_mls_network", "ch06_local_dim")),
    Mutant("ld_measure", "LD measure 2 % off", "flatbook/geometry.py",
           "        ld=_ld_from_sigma(sigma),", "        ld=1.02 * _ld_from_sigma(sigma),",
           ("ch06_local_dim",)),
    Mutant("t5_mls_loose", "T5 MLS form: κ_l side 1.5× looser", BT,
           "    k = kappa(q, layer) if kappa_l is None else kappa_l\n    return Bound(\n"
           "        f\"t5_mls_{layer}\",",
           "    k = 1.5 * (kappa(q, layer) if kappa_l is None else kappa_l)\n    return Bound(\n"
           "        f\"t5_mls_{layer}\",",
           ("ch07_invariance",)),
    Mutant("kappa_identity", "T5 identity: κ_l 2 % off", BT,
           "    return (lm.h_sqnorm * lm.measures.frob_sq).mean()",
           "    return 1.02 * (lm.h_sqnorm * lm.measures.frob_sq).mean()",
           ("ch07_invariance",)),
    Mutant("kappa_definition", "κ_l from its Hessian-block definition 2 % off", BSEQ,
           "    return ((W @ W.T) * T).sum().detach()",
           "    return 1.02 * ((W @ W.T) * T).sum().detach()",
           ("ch07_invariance",)),
    Mutant("adaptive_sharpness", "adaptive sharpness 2 % off", BH,
           "            return (theta**2 * Hd).sum()",
           "            return 1.02 * (theta**2 * Hd).sum()",
           ("ch07_invariance",)),
    Mutant("shared_untied_tight", "shared weights: tied ≤ T·U with T·U 2 % tighter", BSEQ,
           '            "shared_tied", self.tied, self.T * self.untied,',
           '            "shared_tied", self.tied, 0.98 * self.T * self.untied,',
           ("ch08_shared_weights",)),
    Mutant("shared_position_loose", "shared weights: position-wise rhs 1.5× looser", BSEQ,
           '"shared_position_wise", self.sensitivity, self.weight_sqnorm * self.untied,',
           '"shared_position_wise", self.sensitivity, 1.5 * self.weight_sqnorm * self.untied,',
           ("ch08_shared_weights",)),
    Mutant("shared_grad_terms", "shared weights: Σ_t,t' cross terms 2 % off", BSEQ,
           '    from_terms = torch.einsum("nkmt,npt->nkmp", G, h).pow(2).sum((1, 2, 3))',
           '    from_terms = 1.02 * torch.einsum("nkmt,npt->nkmp", G, h).pow(2).sum((1, 2, 3))',
           ("ch08_shared_weights",)),
    Mutant("t7_sgd_tight", "T7 SGD ceiling: 2k/(pη) 2 % tighter", BST,
           "    rhs = math.inf if p == 0 else 2.0 * k / (p * lr)",
           "    rhs = math.inf if p == 0 else 0.98 * 2.0 * k / (p * lr)",
           ("ch02_stability",)),
    Mutant("t7_sgd_sqrtk", "T7 SGD ceiling: constant √k instead of k", BST,
           "    rhs = math.inf if p == 0 else 2.0 * k / (p * lr)",
           "    rhs = math.inf if p == 0 else 2.0 * math.sqrt(k) / (p * lr)",
           ("ch02_stability",)),
    Mutant("t7_gd_loose", "T7 GD: 2/η 2 % looser", BST,
           '    return Bound("t7_gd", lambda_max, 2.0 / lr,',
           '    return Bound("t7_gd", lambda_max, 2.04 / lr,',
           ("ch02_stability",)),
    Mutant("eta_star", "η* (step of the mean-square condition) 2 % off", BST,
           "    return float(2 * trH / denom)", "    return float(1.02 * 2 * trH / denom)",
           ("ch02_stability", "ch09_capstone")),
    Mutant("corollary_lvr_loose", "capstone volume form: rhs 1.5× looser", "flatbook/chain.py",
           '    lvr = _bounds.Bound("corollary_lvr", _gm(lvr_pow), 2.0 * w2 / (p * lr * gm_x2),',
           '    lvr = _bounds.Bound("corollary_lvr", _gm(lvr_pow), 3.0 * w2 / (p * lr * gm_x2),',
           ("ch09_capstone",)),
    Mutant("corollary_mls_tight", "capstone MLS form: rhs 2 % tighter", "flatbook/chain.py",
           '    mls = _bounds.Bound("corollary_mls", _gm(mls2), 2.0 * k * w2 / (p * lr * gm_x2),',
           '    mls = _bounds.Bound("corollary_mls", _gm(mls2), 1.96 * k * w2 / (p * lr * gm_x2),',
           ("ch09_capstone",)),
    Mutant("sharp_constant_2sqrtk", "capstone sharper MLS form: constant 2√k instead of 1 + √k",
           "flatbook/chain.py", "    return 1.0 + math.sqrt(k)\n",
           "    return 2.0 * math.sqrt(k)\n",
           ("ch09_capstone",), ("tests/test_tight.py", "tests/test_chain_sharp.py")),
    Mutant("sharp_constant_k", "capstone sharper MLS form: constant k instead of 1 + √k",
           "flatbook/chain.py", "    return 1.0 + math.sqrt(k)\n", "    return float(k)\n",
           ("ch09_capstone",), ("tests/test_tight.py", "tests/test_chain_sharp.py")),
)


#: the unmutated package: every chapter must run through (else "caught" would mean nothing)
BASELINE = Mutant("baseline", "nothing planted (every check must pass)", "flatbook/bounds.py",
                  "", "", tuple(CHAPTER_SECONDS))


def _mutate(m: Mutant, dest: Path) -> str | None:
    """Copy the package and tests to ``dest`` and plant ``m``; an error message if stale."""
    shutil.copytree(ROOT / "flatbook", dest / "flatbook",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "setup.cfg", "pytest.ini"):
        if (ROOT / f).exists():
            shutil.copy(ROOT / f, dest / f)
    if not m.old:  # the baseline: nothing planted
        return None
    target = dest / m.path
    text = target.read_text(encoding="utf-8")
    if text.count(m.old) != 1:
        return f"stale: anchor found {text.count(m.old)} times in {m.path}"
    target.write_text(text.replace(m.old, m.new), encoding="utf-8")
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_failure(out: str) -> str:
    """The failing line of a notebook's traceback: the ``assert`` line IPython marks with an
    arrow (``---> 12 assert …``), else the exception line (``AssertionError: …``)."""
    lines = [_ANSI.sub("", ln).rstrip() for ln in out.splitlines()]
    marked = [re.sub(r"^-+>\s*\d*\s*", "", ln) for ln in lines if re.match(r"^-+>", ln)]
    asserts = [ln for ln in marked if ln.startswith("assert")]
    if asserts:
        return asserts[-1][:90]
    errs = [ln.strip() for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln.strip())]
    return (errs[-1] if errs else marked[-1] if marked else "?")[:90]


def _run_chapter(nb: Path, cwd: Path, env: dict[str, str], timeout: int) -> str | None:
    """Execute a notebook; None if it runs through, else its first failing check."""
    code = (
        "import sys, nbformat\n"
        "from nbclient import NotebookClient\n"
        "from nbclient.exceptions import CellExecutionError\n"
        f"nb = nbformat.read({str(nb)!r}, as_version=4)\n"
        f"c = NotebookClient(nb, timeout={timeout}, kernel_name='python3',"
        f" resources={{'metadata': {{'path': {str(cwd)!r}}}}})\n"
        "try:\n    c.execute()\nexcept CellExecutionError as e:\n"
        "    print(str(e)); sys.exit(3)\n"
    )
    r = subprocess.run([PY, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout * 4)
    if r.returncode == 0:
        return None
    return _first_failure(r.stdout + r.stderr)


def _run_tests(tests: tuple[str, ...], cwd: Path, env: dict[str, str]) -> list[str]:
    """Failing test names (pytest run from the mutated copy, which shadows the package)."""
    r = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "--no-header",
                        "-rf", *tests], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    return [ln.split(" ")[1].split("::")[-1] for ln in r.stdout.splitlines()
            if ln.startswith("FAILED ")]


def run_mutant(m: Mutant, fast: Path, timeout: int) -> dict[str, object]:
    """Plant ``m`` in a temporary copy and run its chapters and tests."""
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        dest = Path(tmp)
        stale = _mutate(m, dest)
        if stale:
            return {"mutant": m, "stale": stale, "chapters": {}, "tests": [], "seconds": 0.0}
        env = {**os.environ, "PYTHONPATH": str(dest), "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        chapters = {ch: _run_chapter(fast / "book" / f"{ch}.ipynb", fast / "book", env, timeout)
                    for ch in m.chapters}
        tests = _run_tests(m.tests, dest, env)
    return {"mutant": m, "stale": None, "chapters": chapters, "tests": tests,
            "seconds": time.time() - t0}


def _table(results: list[dict[str, object]]) -> str:
    lines = ["| mutant | planted error | caught by (chapter: first failing check) "
             "| first failing test |",
             "| --- | --- | --- | --- |"]
    for r in results:
        m = r["mutant"]
        assert isinstance(m, Mutant)
        if r["stale"]:
            caught = f"**{r['stale']}**"
        else:
            hits = [f"{ch.split('_')[0]}: `{why}`" for ch, why in r["chapters"].items() if why]
            caught = "; ".join(hits) if hits else "**NOT CAUGHT**"
        tests = ", ".join(r["tests"]) or "—"
        lines.append(f"| `{m.name}` | {m.what} | {caught} | {tests} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (see --list)")
    ap.add_argument("--all", action="store_true", help="run every mutant")
    ap.add_argument("--list", action="store_true", help="list the mutants and a time estimate")
    ap.add_argument("--baseline", action="store_true",
                    help="first run every chapter on the unmutated package (implied by --all)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--fast", default=None,
                    help="an existing fast-book folder (prepare_fast_book.py --out); default: "
                         "converted into a temporary folder")
    ap.add_argument("--timeout", type=int, default=600, help="per notebook cell (s)")
    a = ap.parse_args()
    by_name = {m.name: m for m in MUTANTS}
    chosen = list(MUTANTS) if a.all else [by_name[n] for n in a.names if n in by_name]
    unknown = [n for n in a.names if n not in by_name]
    if unknown:
        ap.error(f"unknown mutants {unknown}; allowed: {list(by_name)}")
    if a.list or not (chosen or a.baseline):
        for m in MUTANTS:
            est = sum(CHAPTER_SECONDS.get(c, 30) for c in m.chapters) + TEST_SECONDS
            print(f"{m.name:24s} ~{est:4d} s  {m.what}  [{', '.join(m.chapters)}]")
        total = sum(sum(CHAPTER_SECONDS.get(c, 30) for c in m.chapters) + TEST_SECONDS
                    for m in MUTANTS)
        print(f"all {len(MUTANTS)} mutants: ~{total / 60:.0f} min with --jobs 1 on an idle core")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutants-fast-") as tmp:
        fast = Path(a.fast) if a.fast else Path(tmp)
        if not a.fast:
            subprocess.run([PY, str(ROOT / "scripts" / "prepare_fast_book.py"), "--out",
                            str(fast)], check=True, cwd=ROOT)
        results: list[dict[str, object]] = []
        with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
            if a.baseline or a.all:
                base = run_mutant(BASELINE, fast, a.timeout)
                broken = {ch: why for ch, why in base["chapters"].items() if why}
                print(f"baseline: {'FAILS ' + str(broken) if broken else 'every chapter passes'}"
                      f" ({base['seconds']:.0f} s)", flush=True)
                if broken or base["tests"]:
                    print(f"the unmutated package fails {broken or base['tests']}: fix that first")
                    return 2
            futs = [ex.submit(run_mutant, m, fast, a.timeout) for m in chosen]
            for f in futs:
                r = f.result()
                m = r["mutant"]
                assert isinstance(m, Mutant)
                ok = not r["stale"] and any(r["chapters"].values())
                print(f"{m.name}: {'caught' if ok else 'NOT CAUGHT'} ({r['seconds']:.0f} s)",
                      flush=True)
                results.append(r)
    print()
    print(_table(results))
    return 0 if all(not r["stale"] and any(r["chapters"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
