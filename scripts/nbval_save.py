"""pytest plugin: keep what nbval executed, so each chapter runs once per test run.

``pytest --nbval-lax -p nbval_save --nbval-save`` (with ``scripts/`` on ``sys.path``) runs every
chapter notebook under nbval as usual — each code cell is a test item, a raising cell fails —
and, for every notebook whose cells *all* passed, writes the outputs nbval received from the
kernel (streams, displays with their metadata — glue records included —, execution counts)
back into that ``.ipynb``, atomically. The strict book build and the editions then render those
executed notebooks with execution switched off (``scripts/prepare_fast_book.py --executed``)
instead of executing every chapter a second time. A notebook with a failing or skipped cell is
left unexecuted on disk, so a later build cannot show a half-run chapter as if it were whole.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import nbformat
import pytest

_RESULTS: dict[str, dict[str, Any]] = defaultdict(lambda: {"ok": True, "cells": []})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--nbval-save", action="store_true", default=False,
                     help="write each fully passing notebook back with its executed outputs")


def _is_nbval_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "test_outputs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    if not item.config.getoption("--nbval-save") or not _is_nbval_cell(item):
        return
    report = outcome.get_result()
    entry = _RESULTS[str(item.parent.fspath)]
    entry["nb"] = item.parent.nb
    if report.when == "call":
        entry["cells"].append((item.cell, item.test_outputs))
    if report.failed or report.skipped:
        entry["ok"] = False


def _write_executed(path: str, entry: dict[str, Any]) -> None:
    for count, (cell, outputs) in enumerate(entry["cells"], start=1):
        cell.outputs = [nbformat.from_dict(dict(o)) for o in (outputs or [])]
        for out in cell.outputs:
            if out.get("output_type") == "execute_result":
                out["execution_count"] = count
        cell.execution_count = count
    tmp = Path(path).with_suffix(".ipynb.tmp")
    nbformat.write(entry["nb"], str(tmp))
    os.replace(tmp, path)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--nbval-save"):
        return
    saved = 0
    for path, entry in _RESULTS.items():
        n_code = sum(c.cell_type == "code" for c in entry.get("nb", {"cells": []})["cells"])
        if entry["ok"] and "nb" in entry and len(entry["cells"]) == n_code:
            _write_executed(path, entry)
            saved += 1
    print(f"\n[nbval_save] {saved} of {len(_RESULTS)} notebooks written back with their outputs")
