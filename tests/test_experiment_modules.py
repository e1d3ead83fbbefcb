"""flatbook.experiment split into one module per concept: every name keeps its import path,
the split modules meet the house rules and count as store bookkeeping (not in the code hash)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from flatbook import _io
from flatbook import experiment as E

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ("run_config", "run_numerics", "run_results", "run_inspect", "run_folder")

# Every name flatbook.experiment defined before the split (public API, and the private names
# the ensemble engine and the tests use): they must stay reachable from it.
NAMES = """
CHECKS DEFAULT_RESULTS_DIR DEFAULT_STEPS DEVICES ENGINES FINISHED FOLDER_LOCK LOCK_TRIES
MODEL_OPTION_KINDS NUMERICS NUMERICS_POLICIES OPERATIONAL RESTART SHOW_STATUSES SMALL_MODEL
STALE_TMP_S STATUSES STORE_FORMAT NumericsMismatchError NumericsWarning Results RunConfig RunInfo
RunLockedError StaleResultsError check_numerics default_measure expected_numerics
failure_outcome grid inspect_run inspect_store load_results lock_holder lock_path
numerics_diff numerics_fingerprint open_run prepare read_config_file resolve_threads
restart_aside run run_dir_for run_lock run_one sweep validate
_base_doc _build_model _data_key _load_data _load_finished _read_results _resolve_device
_resolve_steps _config_doc _unsealed
""".split()


def _house_rules():  # noqa: ANN202
    path = ROOT / "scripts" / "house_rules.py"
    spec = importlib.util.spec_from_file_location("house_rules", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_name_of_experiment_is_still_importable_from_it() -> None:
    missing = [n for n in NAMES if not hasattr(E, n)]
    assert missing == []
    assert set(E.__all__) <= set(vars(E)) and len(E.__all__) == len(set(E.__all__))
    for name in ("DEFAULT_STEPS", "OPERATIONAL", "Results", "RunConfig", "StaleResultsError",
                 "grid", "load_results", "prepare", "run", "run_dir_for", "run_one", "sweep",
                 "validate"):  # fmt: skip
        assert name in E.__all__, name


@pytest.mark.parametrize("module", SPLIT)
def test_split_modules_names_are_the_same_objects_in_experiment(module: str) -> None:
    mod = importlib.import_module(f"flatbook.{module}")
    assert mod.__all__, module
    for name in mod.__all__:
        assert getattr(E, name) is getattr(mod, name), f"{module}.{name}"


def test_split_modules_meet_the_house_rules() -> None:
    hr = _house_rules()
    files = [ROOT / "flatbook" / f"{m}.py" for m in ("experiment", *SPLIT)]
    assert [o for f in files for o in hr.offences(f, 50, 8, 550)] == []


def test_split_modules_are_bookkeeping_not_numeric_code() -> None:
    """Moving the store's code between modules must not make every stored run stale: the
    split modules, like experiment.py, are outside the code hash."""
    for m in ("experiment", *SPLIT):
        assert f"{m}.py" not in _io.numeric_modules(), m


def test_run_ids_and_config_documents_unchanged_by_the_split(tmp_path: Path) -> None:
    """The run id, config hash and config.json bytes of a config (values computed before the
    split) are those of a config built through either import path."""
    from flatbook import run_config

    kw = dict(n_train=48, n_test=24, classes=[0, 1, 2], model_kw={"hidden": [8]}, steps=20,
              measure_every=10, eval_size=16, measures=("sharpness", "trace"), batch_size=8,
              lr=0.1, progress=False, dtype="float64")  # fmt: skip
    a, b = E.RunConfig(**kw), run_config.RunConfig(**kw)
    assert a == b and a.run_id == b.run_id == "mlp-digits-lr0.1-b8-s0-29875ee7e4"
    doc = E._config_doc(a, {"device": "cpu", "threads": 1, "dtype": "float64", "torch": "x"})
    assert doc["config_hash"] == a.config_hash and doc["store_format"] == E.STORE_FORMAT == 2
    path = tmp_path / a.run_id / "config.json"
    path.parent.mkdir()
    _io.write_json(path, doc)
    assert E.read_config_file(path) == {k: v for k, v in doc.items() if k != "sha256"}
    assert json.loads(path.read_text())["run_id"] == a.run_id


def test_load_results_warnings_name_the_callers_line(tmp_path: Path) -> None:
    """load_results delegates to helpers; its warnings still point at the line that called it
    (a warning filter or ``-W error::...:module`` keyed on the caller keeps working)."""
    rd = tmp_path / "mlp-digits-lr0.1-b8-s0-0000000000"
    rd.mkdir()
    (rd / "results.json").write_text("{not json")
    with pytest.warns(UserWarning, match="left out a damaged run") as rec:
        assert E.load_results(tmp_path) == []
    assert rec[0].filename == __file__
