"""The store never loses a run and cannot be fooled: stale runs moved aside (never deleted)
and named; ``show``/``plot`` list every good run of a store holding crafted files, name the
bad ones and print no control characters; symbolic links out of the store refused; the run
lock holds when ``.locks`` is removed mid-run; store faults named before any training."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch

from flatbook import _io, locks
from flatbook import experiment as ex
from flatbook import store as st
from flatbook.__main__ import main

TINY = dict(n_train=40, n_test=20, classes=(0, 1, 2), model_kw={"hidden": [4]}, steps=6,
            measure_every=3, schedule="linear", eval_size=8, measures=(), batch_size=8,
            progress=False, checkpoint_every=3, dtype="float64")  # fmt: skip


def tiny(**kw: object) -> ex.RunConfig:
    return ex.RunConfig(**{**TINY, **kw})  # type: ignore[arg-type]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _reseal(path: Path, edit: object) -> None:
    doc = _io.read_json(path)
    edit(doc)  # type: ignore[operator]
    _io.write_json(path, _io.seal({k: v for k, v in doc.items() if k != "sha256"}))


# ------------------------------------------------------------------------- moved aside


def test_move_aside_is_a_rename_inside_the_store_with_unique_names(tmp_path: Path) -> None:
    for n in (1, 2):
        (tmp_path / "r1").mkdir()
        (tmp_path / "r1" / "results.json").write_text(str(n))
        to = st.move_aside(tmp_path, "r1", "damaged")
        assert to == tmp_path / "stale" / ("r1-damaged" + ("-2" if n == 2 else ""))
        assert (to / "results.json").read_text() == str(n) and not (tmp_path / "r1").exists()
    with pytest.raises(ValueError, match="reason must be one of"):
        st.move_aside(tmp_path, "r1", "because")
    for bad in ("..", "a/b", "stale", ""):
        with pytest.raises(ValueError, match="run_id must be one folder name"):
            st.move_aside(tmp_path, bad, "damaged")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "r2").symlink_to(outside)
    with pytest.raises(st.StoreFaultError, match="symbolic link"):
        st.move_aside(tmp_path, "r2", "damaged")
    assert outside.is_dir() and (tmp_path / "r2").is_symlink()


def test_restart_moves_the_run_aside_and_says_so(tmp_path: Path) -> None:
    cfg = tiny()
    first = ex.run(cfg, tmp_path)
    old = _files(first.run_dir)
    with pytest.warns(st.MovedAsideWarning, match=rf"{cfg.run_id}: started over .* moved to"):
        again = ex.run(cfg, tmp_path, overwrite=True)
    assert again.status == "completed" and again.records == first.records
    assert _files(tmp_path / "stale" / f"{cfg.run_id}-restart") == old
    assert [i.run_id for i in ex.inspect_store(tmp_path)] == [cfg.run_id]  # stale/ not a run


def test_a_chapter_moves_stale_runs_aside_names_them_and_recomputes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs written by a newer store format, a newer flatbook and other numeric code, opened
    with compute_missing=True: every old file kept under stale/, each run named with its
    reason, and the study recomputed."""
    from flatbook import analysis

    s = dataclasses.replace(analysis.get_setting("digits-mlp"), test_size=0,
                            representations="none")  # fmt: skip
    cfgs = analysis.study_configs("digits-mlp", lrs=[0.1], batch_sizes=[8], seeds=[0, 1, 2],
                                  steps=6, measure_every=3, n_train=40, eval_size=8,
                                  model_kw={"hidden": [4]})  # fmt: skip
    runs = analysis.obtain(cfgs, s, tmp_path, workers=1)
    edits = {
        "newer-format": lambda d: d.update(store_format=ex.STORE_FORMAT + 1),
        "newer-flatbook": lambda d: d["provenance"].update(flatbook="99.0.0"),
        "other-code": lambda d: d["provenance"].update(code_hash="0" * 64),
    }
    old = {}
    for r, (reason, edit) in zip(runs, edits.items(), strict=True):
        _reseal(r.run_dir / "results.json", edit)
        old[r.run_dir.name] = (reason, _files(r.run_dir))
    capsys.readouterr()
    again = analysis.obtain(cfgs, s, tmp_path, workers=1)
    out = capsys.readouterr().out
    assert "moved 3 stored run(s) aside (kept, not deleted)" in out
    for run_id, (reason, files) in old.items():
        kept = runs[0].run_dir.parent / "stale" / f"{run_id}-{reason}"
        assert _files(kept) == files  # every old file, byte for byte
        assert f"{run_id}: {st.REASONS[reason]} — moved to {kept}" in out
    assert [r.status for r in again] == ["completed"] * 3
    assert [r.records for r in again] == [r.records for r in runs]  # same code, same numbers
    shown = ex.inspect_store(tmp_path)
    assert sorted(i.run_id.split("/")[1] for i in shown) == sorted(old)
    assert main(["show", str(tmp_path)]) == 0
    assert "3 earlier run(s) moved aside" in capsys.readouterr().out


# ------------------------------------------------------------------------- crafted files


def _crafted_store(root: Path) -> tuple[list[str], dict[str, str]]:
    """Two good runs and one run per crafted fault: (good ids, {bad id: file to be named})."""
    ids = [ex.run(tiny(seed=k), root).run_dir.name for k in range(8)]
    good, bad = ids[:2], {}

    def craft(i: int, name: str, fn: object) -> None:
        fn(root / ids[i] / name)  # type: ignore[operator]
        bad[ids[i]] = name

    craft(2, "results.json", lambda p: p.write_text('{"a": ' + "[" * 900 + "]" * 900 + "}"))
    craft(3, "results.json", lambda p: _reseal(p, lambda d: d.update(final=[1, 2])))
    craft(4, "results.json", lambda p: p.write_text(
        p.read_text().replace('"steps": 6', '"steps": ' + "7" * 5000)))

    def bad_record(p: Path) -> None:
        (p.parent / "results.json").unlink()
        state = _io.read_checkpoint(p, "")
        state["records"] = [{"step": 0, "train_loss": "\x1b[2Jcompleted"}]
        _io.save_checkpoint(p, state)

    craft(5, "checkpoint.pt", bad_record)

    def ansi(p: Path) -> None:
        _reseal(p, lambda d: d.update(status="failed", error="\x1b[2J\x1b[H\rforged\n"
                                      "evil-run  completed  6/6\u202e"))

    ansi(root / ids[6] / "results.json")  # a legal run whose error text is hostile
    craft(7, "results.json", lambda p: _reseal(p, lambda d: d.update(steps_done="six")))
    return good, bad


def _no_control(text: str) -> None:
    bad = {c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")}
    assert not bad, f"control characters printed: {bad}"


def test_show_and_plot_survive_a_store_of_crafted_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = _crafted_store(tmp_path)
    evil = tmp_path / "evil\x1b[31m-run"  # a hostile folder name
    shutil.copytree(tmp_path / good[0], evil)
    (tmp_path / "linked").symlink_to(tmp_path / good[1])
    capsys.readouterr()
    assert main(["show", str(tmp_path), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    _no_control(out)
    rows = {r["run_id"]: r for r in csv.DictReader(io.StringIO(out))}
    assert all(rows[g]["status"] == "completed" for g in good)
    for run_id, name in bad.items():
        assert rows[run_id]["status"] == "damaged" and name in rows[run_id]["note"], run_id
    assert rows["linked"]["status"] == "damaged" and "symbolic link" in rows["linked"]["note"]
    assert rows["evil?[31m-run"]["status"] == "damaged"
    assert main(["show", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    _no_control(table)
    assert not any(line.startswith("evil-run") for line in table.splitlines())
    assert main(["show", str(tmp_path), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(rows)
    assert main(["plot", str(tmp_path), "--keys", "train_loss",
                 "--out", str(tmp_path / "p.png")]) == 0  # fmt: skip
    assert (tmp_path / "p.png").stat().st_size > 0


def test_show_shows_the_loss_a_diverged_step_and_filters_strictly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ce = ex.run(tiny(loss="cross_entropy", measures=("report",)), tmp_path)
    assert isinstance(ce.final["loss"], float)  # the report's loss value, a record key
    div = ex.run(tiny(lr=1e6, steps=30, measure_every=10), tmp_path)
    assert div.status == "diverged" and div.data["diverged_at"] is not None
    capsys.readouterr()
    assert main(["show", str(tmp_path), "--format", "csv"]) == 0
    rows = {r["run_id"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows[div.run_dir.name]["step"] == str(div.data["diverged_at"])
    assert main(["show", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert f"{div.data['diverged_at']}/30" in table and "cross_entropy" in table
    assert table.splitlines()[0].split()[4:7] == ["loss", "train", "loss"]
    for expr in ("loss=cross_entropy", "config.loss=cross_entropy"):
        assert main(["show", str(tmp_path), "--format", "json", "--filter", expr]) == 0
        got = json.loads(capsys.readouterr().out)
        assert [r["loss"] for r in got] == ["cross_entropy"]
        assert got[0]["record_loss"] == ce.final["loss"]
    for expr in ("lr<<0.2", "lr<abc", "lr=", "status=!completed"):
        with pytest.raises(SystemExit) as e:
            main(["show", str(tmp_path), "--filter", expr])
        assert e.value.code == 2 and "--filter" in capsys.readouterr().err


@pytest.mark.parametrize("content", [os.urandom(300), b"[1, 2]",
                                     b'{"lr": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_a_bad_config_file_is_a_named_error(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "cfg.json"
    p.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(p), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--config {p}" in err and "Traceback" not in err
    _no_control(err)


# ------------------------------------------------------------------------- staying inside


def test_links_out_of_the_store_are_refused_before_training(tmp_path: Path) -> None:
    cfg, root = tiny(), tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    steps: list[int] = []

    def seen(t: int, model: torch.nn.Module, rec: dict | None) -> None:
        steps.append(t)

    (root / cfg.run_id).symlink_to(outside)
    with pytest.raises(st.StoreFaultError, match="run folder.*symbolic link"):
        ex.run(cfg, root, callback=seen)
    (root / cfg.run_id).unlink()
    (root / ".locks").symlink_to(outside)
    with pytest.raises(st.StoreFaultError, match="lock folder.*symbolic link"):
        ex.run(cfg, root, callback=seen)
    (root / ".locks").unlink()
    (root / ".locks").write_text("not a folder")
    with pytest.raises(st.StoreFaultError, match=r"\.locks is a file"):
        ex.run(cfg, root, callback=seen)
    (root / ".locks").unlink()
    (root / cfg.run_id / "results.json").mkdir(parents=True)
    with pytest.raises(st.StoreFaultError, match=r"results\.json is not a regular file"):
        ex.run(cfg, root, callback=seen)
    (root / cfg.run_id / "results.json").rmdir()
    (root / cfg.run_id / "checkpoint.pt").symlink_to(outside / "ckpt.pt")
    with pytest.raises(st.StoreFaultError, match="run file.*symbolic link"):
        ex.run(cfg, root, callback=seen)
    assert steps == [] and list(outside.iterdir()) == []  # nothing trained, nothing outside


def test_cli_names_a_store_fault_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny()
    (tmp_path / cfg.run_id / "results.json").mkdir(parents=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(tmp_path / "cfg.json"), "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "results.json is not a regular file" in err
    assert "run failed" not in err and not (tmp_path / cfg.run_id / "checkpoint.pt").exists()


def test_the_lock_holds_when_locks_is_removed_mid_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny()
    monkeypatch.setattr(locks, "LOCK_TRIES", 1)
    code = (f"import time; from flatbook import experiment as ex\n"
            f"with ex.run_lock({str(tmp_path)!r}, {cfg.run_id!r}):\n"
            f"    print('locked', flush=True); time.sleep(120)\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(ex.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        shutil.rmtree(tmp_path / ".locks")
        with pytest.raises(ex.RunLockedError, match=f"run {cfg.run_id} is being trained"):
            ex.run(cfg, tmp_path)
        assert ex.lock_holder(tmp_path, cfg.run_id) is not None
        assert ex.run_one(cfg.to_dict(), tmp_path)["status"] == "running"
        assert not (tmp_path / cfg.run_id / "checkpoint.pt").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    assert ex.lock_holder(tmp_path, cfg.run_id) is None
    assert ex.run(cfg, tmp_path).status == "completed"


def test_a_store_that_turns_read_only_mid_run_is_a_store_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    cfg = tiny()
    real = _io._write_bytes
    calls = {"n": 0}

    def read_only_after_first(fh: object, data: bytes) -> None:
        if ".checkpoint.pt." in str(getattr(fh, "name", "")):
            calls["n"] += 1
            if calls["n"] >= 2:  # the step-3 checkpoint is written, then the folder is not
                raise OSError(errno.EROFS, "Read-only file system")
        real(fh, data)  # type: ignore[arg-type]

    monkeypatch.setattr(_io, "_write_bytes", read_only_after_first)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(tmp_path / "cfg.json"), "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "not writable" in err and "checkpoint.pt" in err
    assert "run failed" not in err and "Traceback" not in err
    rd = tmp_path / cfg.run_id
    assert not (rd / "results.json").exists()  # not recorded as a failed run
    assert _io.load_checkpoint(rd / "checkpoint.pt")["step"] == 3  # type: ignore[index]
    monkeypatch.setattr(_io, "_write_bytes", real)  # writable again: the same command resumes
    assert ex.run(cfg, tmp_path).data["provenance"]["resumed_from"] == 3


def test_where_a_folder_cannot_be_locked_a_file_inside_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import stat

    real = locks._try_flock

    def no_folder_locks(fd: int) -> bool:  # as on NFS: flock needs a writable file
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd)

    monkeypatch.setattr(locks, "_try_flock", no_folder_locks)
    monkeypatch.setattr(locks, "LOCK_TRIES", 1)
    with ex.run_lock(tmp_path, "r1"):
        assert (tmp_path / "r1" / ex.FOLDER_LOCK).is_file()
        shutil.rmtree(tmp_path / ".locks")
        assert ex.lock_holder(tmp_path, "r1") is not None
        with pytest.raises(ex.RunLockedError), ex.run_lock(tmp_path, "r1"):
            pass
    assert ex.lock_holder(tmp_path, "r1") is None


def test_json_limits_size_depth_and_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"a": [[[1]]], "n": 10**39}))
    assert _io.read_json(p) == {"a": [[[1]]], "n": 10**39}  # within every limit
    monkeypatch.setattr(_io, "MAX_JSON_BYTES", 20)
    with pytest.raises(_io.JSONLimitError, match="larger than 20 bytes"):
        _io.read_json(p)
    monkeypatch.setattr(_io, "MAX_JSON_BYTES", 1 << 20)
    for text, what in (("[" * 65 + "]" * 65, "deeper than 64"), ("[" * 5000 + "]" * 5000,
                       "deeper than 64"), ("1" * 41, "41-digit integer")):  # fmt: skip
        p.write_text(text)
        with pytest.raises(_io.JSONLimitError, match=what):
            _io.read_json(p)


def test_code_hash_covers_every_measurement_module_and_no_bookkeeping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored run is stale when any module that computes numbers changes — including a
    module added later (the measurement core is split over many) — and not when a figure or
    the command line changes."""
    from flatbook import _io

    pkg = tmp_path / "flatbook"
    pkg.mkdir()
    for f in _io.PACKAGE_DIR.glob("*.py"):
        (pkg / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(_io, "PACKAGE_DIR", pkg)
    base = _io.code_hash()
    for name, counts in (("lanczos.py", True), ("pipeline.py", True), ("train.py", True),
                         ("plots.py", False), ("__main__.py", False)):
        f = pkg / name
        old = f.read_bytes()
        f.write_bytes(old + b"\n# edited\n")
        assert (_io.code_hash() != base) == counts, name
        f.write_bytes(old)
    (pkg / "new_estimator.py").write_text("X = 1\n")   # a module added later counts too
    assert _io.code_hash() != base
