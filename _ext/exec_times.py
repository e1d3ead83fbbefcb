"""Sphinx extension: write how long each chapter took to execute.

After a build, ``<outdir>/../execution-times.json`` holds, per document that myst-nb executed,
its run time in seconds, the execution method and whether it succeeded — read by
``scripts/chapter_times.py`` for the README's table of per-chapter execution times (the
budget later changes must keep).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _write(app: Any, exception: BaseException | None) -> None:
    if exception is not None:
        return
    from myst_nb.sphinx_ import NbMetadataCollector

    out = {}
    for docname in sorted(getattr(app.env, "nb_metadata", {})):
        data = NbMetadataCollector.get_exec_data(app.env, docname)
        if data:
            out[docname] = {"runtime_s": data.get("runtime"), "method": data.get("method"),
                            "succeeded": data.get("succeeded")}
    path = Path(app.outdir).parent / "execution-times.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True))
    tmp.replace(path)
    total = sum(v["runtime_s"] or 0 for v in out.values())
    print(f"[exec_times] {len(out)} notebooks, {total:.0f} s of execution -> {path}")


def setup(app: Any) -> dict[str, Any]:
    app.connect("build-finished", _write)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
