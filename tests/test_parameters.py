"""A chapter's papermill parameters (``flatbook._validate.check_parameters``): booleans are
real booleans (papermill's strings parsed, never truthy), a misspelt injected parameter is
named with the allowed ones, and every chapter's test parameters are names it declares."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

from flatbook._validate import _assigned_names, as_bool, check_parameters, injected_parameters

ROOT = Path(__file__).resolve().parents[1]
PARAMS_CELL = ('setting = "digits-mlp"\ncompute_missing = True  # read only when False\n'
               "n_boot = 200\n")


@pytest.mark.parametrize(
    ("value", "want"),
    [(False, False), ("no", False), ("false", False), ("False", False), ("0", False), (0, False),
     ("off", False), (True, True), ("yes", True), ("TRUE", True), ("1", True), (1, True)],
)
def test_papermill_booleans_are_parsed_into_real_booleans(value: object, want: bool) -> None:
    values = {"compute_missing": value}
    check_parameters(values, compute_missing="bool")
    assert values["compute_missing"] is want


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, 0.5, None, [True]])
def test_anything_else_is_refused_naming_the_parameter(value: object) -> None:
    with pytest.raises(ValueError, match=r"parameter compute_missing must be True or False.*"
                                         r"papermill -p compute_missing"):
        check_parameters({"compute_missing": value}, compute_missing="bool")
    assert as_bool(value) is None


def test_a_list_of_booleans_and_an_optional_boolean() -> None:
    values = {"flags": ["no", 1, True], "maybe": None}
    check_parameters(values, flags="list[bool]", maybe="bool | None")
    assert values == {"flags": [False, True, True], "maybe": None}


def _history(*cells: str) -> list[str]:
    """IPython's ``In``: an empty entry 0, the executed cells, the running cell last."""
    return ["", *cells, "check_parameters(globals(), n_boot='int >= 1')"]


def test_a_misspelt_injected_parameter_is_named_with_the_allowed_ones() -> None:
    injected = '# Parameters\nn_boots = 50\ncompute_missing = "no"\n'  # papermill's form
    values = {"In": _history(PARAMS_CELL, injected, "import math"), "n_boot": 200,
              "n_boots": 50}  # fmt: skip
    with pytest.raises(ValueError) as e:
        check_parameters(values, n_boot="int >= 1")
    msg = str(e.value)
    assert "['n_boots']" in msg and "['compute_missing', 'n_boot', 'setting']" in msg
    assert "\n" not in msg
    assert injected_parameters(values["In"]) == ({"setting", "compute_missing", "n_boot"},
                                                 {"n_boots", "compute_missing"})  # fmt: skip


def test_declared_injections_and_reruns_in_a_live_kernel_pass() -> None:
    good = '# Parameters\nn_boot = 50\n'
    for history in (_history(PARAMS_CELL, good, "import math"),  # papermill
                    _history(PARAMS_CELL, "import math", "x = f(1)", PARAMS_CELL, "import math"),
                    _history("import math")):  # no parameters cell at all
        check_parameters({"In": history, "n_boot": 50}, n_boot="int >= 1")
    check_parameters({"n_boot": 50}, n_boot="int >= 1")  # plain Python: no history


def test_assignment_cells_are_recognised() -> None:
    assert _assigned_names(PARAMS_CELL) == {"setting", "compute_missing", "n_boot"}
    assert _assigned_names("x: int = 3\ny = [1, 2]") == {"x", "y"}
    for not_params in ("import math", "x = 1\nprint(x)", "a.b = 1", "x, y = 1, 2", "", "x ="):
        assert _assigned_names(not_params) is None, not_params


def _chapters() -> list[Path]:
    return sorted(p for p in (ROOT / "book").glob("*.md")
                  if "tags: [parameters]" in p.read_text(encoding="utf-8"))  # fmt: skip


@pytest.mark.parametrize("md", _chapters(), ids=lambda p: p.stem)
def test_every_chapter_declares_its_test_parameters_and_checks_its_booleans(md: Path) -> None:
    """The fast build injects each chapter's ``test_parameters`` like papermill: they must be
    names of its parameters cell (else the misspelling check would stop it); its first code
    cell calls check_parameters (which refuses a misspelt injected name), with a ``"bool"``
    rule for each boolean parameter (else "no" is truthy)."""
    nb = jupytext.read(md)
    code = [c for c in nb.cells if c.cell_type == "code"]
    (i,) = [k for k, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    declared = _assigned_names(code[i].source)
    assert declared, f"{md.name}: the parameters cell must hold only assignments"
    tests = (nb.metadata.get("flatbook") or {}).get("test_parameters") or {}
    assert set(tests) <= declared, sorted(set(tests) - declared)
    namespace: dict[str, object] = {}
    exec(code[i].source, namespace)  # noqa: S102 - the chapter's own literals
    bools = [k for k in declared if isinstance(namespace[k], bool)]
    first = code[i + 1].source if i + 1 < len(code) else ""
    assert "check_parameters(globals()" in first, f"{md.name}: its first code cell must check"
    for name in bools:
        assert f'{name}="bool"' in first.replace(" ", ""), (md.name, name)


def test_papermill_injection_end_to_end(tmp_path: Path) -> None:
    """Through papermill and a real kernel: ``-p compute_missing no`` arrives as False, and a
    misspelt ``-p`` name stops the notebook with the message naming it."""
    import nbformat
    import papermill

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}  # fmt: skip
    cells = [PARAMS_CELL,
             "from flatbook.book import check_parameters\n"
             "check_parameters(globals(), compute_missing='bool', n_boot='int >= 1')\n"
             "assert compute_missing is False, compute_missing"]  # fmt: skip
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.cells[1].metadata["tags"] = []
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    run = dict(kernel_name="python3", log_output=False, progress_bar=False, cwd=str(tmp_path))
    papermill.execute_notebook(str(src), str(tmp_path / "ok.ipynb"),
                               parameters={"compute_missing": "no"}, **run)  # fmt: skip
    with pytest.raises(papermill.PapermillExecutionError,
                       match=r"unknown parameter.*'compute_mising'"):
        papermill.execute_notebook(str(src), str(tmp_path / "bad.ipynb"),
                                   parameters={"compute_mising": False}, **run)  # fmt: skip
