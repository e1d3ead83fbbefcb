"""Sweeps as submitit jobs.

Local executor, end to end, one sweep of 4 configs (each job: a fresh Python process that
imports torch; 6 job starts in all): while the jobs train, a resubmission runs 0 new jobs;
one job gets the time-limit warning (checkpoint and requeue), one is killed; the sweep ends
with 3 completed and 1 interrupted run; resubmitting (through the CLI) runs 1 job, which
resumes; then a resubmission runs 0 jobs; every run's numbers equal those of an uninterrupted
in-process run. Slurm executor without a cluster: fake srun/sbatch/squeue; the sbatch script
is inspected and the pickled array tasks are executed in-process as Slurm would run them.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest

from flatbook import executors as exe
from flatbook import experiment as ex
from flatbook.__main__ import main

# the callback below travels inside the pickled job: pickle it by value (the job process
# cannot import this test module)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = ex.RunConfig(
    n_train=40, n_test=20, classes=(0, 1, 2), model_kw={"hidden": [6]}, steps=20,
    measure_every=10, schedule="linear", eval_size=12, measures=(), progress=False,
    checkpoint_every=5,
)  # fmt: skip
TINY_ARGS = (
    "--n-train 40 --n-test 20 --classes 0 1 2 --model-kw hidden=[6] --steps 20 --measure-every 10 "
    "--schedule linear --eval-size 12 --measures --checkpoint-every 5 --no-progress"
).split()
GRID = ["--lr", "0.05", "0.1", "--seed", "0", "1"]
CONFIGS = ex.grid(TINY, lr=[0.05, 0.1], seed=[0, 1])
WAIT_S = 240  # generous: job processes import torch on a loaded 2-core machine


class Hold:
    """Training callback: at step ``at``, write ``"<pid>"`` to ``<d>/at-<job id>`` and block
    until ``<d>/go-<job id>`` exists (at most ``WAIT_S`` seconds). Changes no number."""

    def __init__(self, at: int, d: Path) -> None:
        self.at, self.d = at, d

    def __call__(self, step: int, model: object, record: object) -> None:
        job = os.environ.get("SUBMITIT_LOCAL_JOB_ID", "none")
        go = self.d / f"go-{job}"
        if step != self.at or go.exists():
            return
        (self.d / f"at-{job}").write_text(str(os.getpid()))
        t0 = time.time()
        while not go.exists() and time.time() - t0 < WAIT_S:
            time.sleep(0.05)


def _wait_for(paths: list[Path]) -> None:
    t0 = time.time()
    while not all(p.exists() for p in paths):
        assert time.time() - t0 < WAIT_S, f"{[p for p in paths if not p.exists()]} missing"
        time.sleep(0.05)
    time.sleep(0.05)  # the writers have closed them


def _records(results_dir: Path, cfg: ex.RunConfig) -> list[dict]:
    return ex.load_results(results_dir, cfg).records  # type: ignore[union-attr]


def _same_numbers(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] and a[0]["step"] == 0
    assert a[-1]["step"] == 20
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:  # resumption is bit-exact; same machine, same thread count
            assert ra[k] == pytest.approx(rb[k], rel=1e-12, abs=0), k


@pytest.fixture(autouse=True)
def executor_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Executor state of every test in its own folder (never the user's ~/.cache)."""
    d = tmp_path / "executor-state"
    monkeypatch.setenv("FLATBOOK_EXECUTOR_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4 runs, uninterrupted, in this process (no executor)."""
    root = tmp_path_factory.mktemp("reference")
    for cfg in CONFIGS:
        assert ex.run(cfg, root).status == "completed"
    return root


def test_local_sweep_kill_requeue_resubmit(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    opts = exe.ExecutorOptions("local", parallelism=4)
    sub = exe.submit(CONFIGS, root, opts, callback=Hold(7, tmp_path))
    assert sub.n_submitted == 4 and len(sub.jobs) == 4  # one job per config, all started
    jid = {rid: str(job.job_id) for rid, job in sub.jobs.items()}
    a, b, c, d = (cfg.run_id for cfg in CONFIGS)
    _wait_for([tmp_path / f"at-{jid[r]}" for r in jid])  # all 4 blocked at step 7
    pid = {r: int((tmp_path / f"at-{jid[r]}").read_text()) for r in jid}
    for r in jid:  # checkpoint of step 5 on disk, no results yet
        assert (root / r / "checkpoint.pt").is_file() and not (root / r / "results.json").exists()

    # 1. resubmission while the jobs run: 0 new jobs, 4 in flight
    again = exe.submit(CONFIGS, root, opts)
    assert again.n_submitted == 0 and again.in_flight == jid
    assert {s["status"] for s in again.summaries()} == {"in_flight"}

    # 2. a: Slurm's time-limit warning (USR2, from submitit's --signal) -> checkpoint at the
    #    step boundary (step 7), submitit requeues the same job, which resumes from step 7
    os.kill(pid[a], signal.SIGUSR2)
    (tmp_path / f"go-{jid[a]}").touch()  # the handler ran before the callback looks again
    # 3. b: killed (SIGKILL: no clean-up); its periodic checkpoint (step 5) stays
    os.kill(pid[b], signal.SIGKILL)
    for r in (c, d):
        (tmp_path / f"go-{jid[r]}").touch()
    summaries = {s["run_id"]: s for s in sub.wait(poll_s=0.05)}
    assert {r: s["status"] for r, s in summaries.items()} == {
        a: "completed", b: "interrupted", c: "completed", d: "completed"}  # fmt: skip
    assert "resume" in summaries[b]["error"] and not (root / b / "results.json").exists()
    assert "Requeued job" in (sub.jobs[a].stdout() or "")
    resumed = {r: json.loads((root / r / "results.json").read_text())["provenance"]["resumed_from"]
               for r in (a, c, d)}  # fmt: skip
    assert resumed == {a: 7, c: None, d: None}

    # 4. the same sweep again, through the CLI: 1 job (b), which resumes from step 5
    capsys.readouterr()
    cli = ["sweep", *TINY_ARGS, *GRID, "--results-dir", str(root), "--executor", "local"]
    assert main(cli) == 0
    out = capsys.readouterr().out
    assert "local executor: 1 job(s) submitted, 3 finished run(s) skipped" in out
    assert "4 runs: completed 4, diverged 0, failed 0" in out
    assert json.loads((root / b / "results.json").read_text())["provenance"]["resumed_from"] == 5

    # 5. and again: 0 jobs; nothing rewritten
    stamps = {r: (root / r / "results.json").stat().st_mtime_ns for r in jid}
    assert main(cli) == 0
    out = capsys.readouterr().out
    assert "0 job(s) submitted, 4 finished run(s) skipped" in out
    assert stamps == {r: (root / r / "results.json").stat().st_mtime_ns for r in jid}

    # every run, interrupted or not, has the numbers of the uninterrupted run
    for cfg in CONFIGS:
        _same_numbers(_records(root, cfg), _records(reference, cfg))
    ledger = json.loads((exe.default_folder(root) / "jobs.json").read_text())["jobs"]
    assert set(ledger) == set(jid) and ledger[a]["job_id"] == jid[a] != ledger[b]["job_id"]


def test_local_parallelism_limits_running_jobs(tmp_path: Path) -> None:
    """At most ``parallelism`` local jobs run at once; the others start as slots free up
    (fake executor and jobs: no processes)."""

    class FakeJob:
        def __init__(self, n: int) -> None:
            self.job_id, self.finished = str(n), False
            self.paths = SimpleNamespace(result_pickle=tmp_path / f"{n}.pkl")

        def done(self) -> bool:
            return self.finished

    class FakeExecutor:
        def __init__(self) -> None:
            self.jobs: list[FakeJob] = []

        def submit(self, fn: exe.SweepJob, config: dict) -> FakeJob:
            assert isinstance(fn, exe.SweepJob) and config["progress"] is False
            self.jobs.append(FakeJob(len(self.jobs)))
            return self.jobs[-1]

    fake = FakeExecutor()
    sub = exe.Submission(list(CONFIGS), tmp_path, tmp_path / ".submitit",
                         exe.ExecutorOptions("local", parallelism=2), pending=list(CONFIGS),
                         _executor=fake)  # fmt: skip
    sub._start_local()
    assert len(fake.jobs) == 2 and len(sub.pending) == 2 and sub.n_submitted == 4
    sub._start_local()
    assert len(fake.jobs) == 2  # no free slot
    fake.jobs[0].finished = True
    sub._start_local()
    assert len(fake.jobs) == 3
    fake.jobs[1].paths.result_pickle.touch()  # result written, process still exiting: free
    sub._start_local()
    assert len(fake.jobs) == 4 and not sub.pending
    ledger = json.loads((tmp_path / ".submitit" / "jobs.json").read_text())["jobs"]
    assert [ledger[c.run_id]["job_id"] for c in CONFIGS] == ["0", "1", "2", "3"]


# ------------------------------------------------------------------------------ Slurm


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """srun / sbatch / squeue stand-ins on PATH: sbatch keeps the script and answers job 4242;
    squeue prints the lines of ``<bin>/queue``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" {shlex.quote(str(bindir))}/sbatch_script.sh\n'
                  'echo "Submitted batch job 4242"\n',
        "squeue": f"#!/bin/sh\ncat {shlex.quote(str(bindir))}/queue 2>/dev/null\nexit 0\n",
    }  # fmt: skip
    for name, text in scripts.items():
        p = bindir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def _run_task_as_slurm(script: str, job_id: str, task: int | None,
                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Execute ``python -m submitit.core._submit FOLDER`` of the sbatch script in-process with
    the environment Slurm gives job ``job_id`` (array task ``task``, or a plain job if None)."""
    from submitit.core.submission import process_job

    cmd = shlex.split(script.strip().splitlines()[-1])
    folder = cmd[cmd.index("submitit.core._submit") + 1]
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job_id, "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NUM_NODES": "1"}  # fmt: skip
    if task is not None:
        env |= {"SLURM_JOB_ID": str(5000 + task), "SLURM_ARRAY_JOB_ID": job_id,
                "SLURM_ARRAY_TASK_ID": str(task)}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("SUBMITIT_FOLDER", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        if k not in env:
            monkeypatch.delenv(k, raising=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR2)}
    try:
        process_job(folder)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_slurm_array_script_and_jobs_without_a_cluster(
    reference: Path, tmp_path: Path, fake_slurm: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from submitit.core.utils import DelayedSubmission

    cfgs = CONFIGS[:2]
    opts = exe.ExecutorOptions(
        "slurm", partition="gpu", time_min=90, gpus=1, cpus=4, mem_gb=16, parallelism=1,
        setup=("source /opt/flatbook/.venv/bin/activate",), slurm_extra={"account": "abc"},
    )  # fmt: skip
    sub = exe.submit([*cfgs, cfgs[0]], tmp_path, opts)  # a duplicate config runs once
    assert sub.n_submitted == 2
    assert sorted(j.job_id for j in sub.jobs.values()) == ["4242_0", "4242_1"]
    script = (fake_slurm / "sbatch_script.sh").read_text()
    for line in [
        "#SBATCH --array=0-1%1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --job-name=flatbook",
        "#SBATCH --signal=USR2@180",
        "#SBATCH --account=abc",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "source /opt/flatbook/.venv/bin/activate",
        "export SUBMITIT_EXECUTOR=slurm",
    ]:
        assert line in script.splitlines(), line  # fmt: skip
    last = script.strip().splitlines()[-1]
    assert last.startswith("srun --unbuffered") and "-m submitit.core._submit" in last
    assert shlex.quote(sys.executable) in last and "%A_%a" in script
    for cfg in cfgs:  # each array task carries exactly one config
        job = sub.jobs[cfg.run_id]
        d = DelayedSubmission.load(job.paths.submitted_pickle)
        assert isinstance(d.function, exe.SweepJob)
        assert d.function.results_dir == str(tmp_path)
        assert ex.RunConfig.from_dict(d.args[0]).run_id == cfg.run_id

    (fake_slurm / "queue").write_text("4242_0\n4242_1\n")  # still queued: not resubmitted
    again = exe.submit(cfgs, tmp_path, opts)
    assert again.n_submitted == 0 and set(again.in_flight) == {c.run_id for c in cfgs}

    for task in (0, 1):  # what each array task runs on a compute node
        _run_task_as_slurm(script, "4242", task, monkeypatch)
    (fake_slurm / "queue").write_text("")
    summaries = sub.wait(poll_s=0.01)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    for cfg in cfgs:
        _same_numbers(_records(tmp_path, cfg), _records(reference, cfg))
    done = exe.submit(cfgs, tmp_path, opts)
    assert done.n_submitted == 0 and len(done.skipped) == 2


def test_slurm_cli_no_wait(tmp_path: Path, fake_slurm: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    args = ["sweep", *TINY_ARGS, "--lr", "0.05", "0.1", "--results-dir", str(tmp_path),
            "--executor", "slurm", "--partition", "cpu", "--time", "30", "--no-wait",
            "--slurm-option", "qos=low", "--setup", "module load python"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "slurm executor: 2 job(s) submitted (job id 4242)" in out
    script = (fake_slurm / "sbatch_script.sh").read_text().splitlines()
    assert "#SBATCH --qos=low" in script and "module load python" in script
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=30" in script


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--executor", "local", "--partition", "gpu"], "Slurm options"),
        (["--executor", "local", "--no-wait"], "--no-wait needs --executor slurm"),
        (["--executor", "local", "--cpus", "0"], "cpus"),
        (["--executor", "slurm"], "srun and sbatch on PATH"),
        (["--executor", "pbs"], "invalid choice"),
    ],
)
def test_cli_executor_errors(
    extra: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm here
    with pytest.raises(SystemExit) as e:
        main(["sweep", *TINY_ARGS, "--results-dir", str(tmp_path), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.glob("*/results.json"))


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="executor"):
        exe.ExecutorOptions("pbs")
    with pytest.raises(ValueError, match="time_min"):
        exe.ExecutorOptions("slurm", time_min=0)
    with pytest.raises(ValueError, match="gpus"):
        exe.ExecutorOptions("slurm", gpus=-1)
    with pytest.raises(ValueError, match="wait=False"):
        exe.sweep(CONFIGS, "unused", exe.ExecutorOptions("local"), wait=False)
    assert exe.ExecutorOptions("slurm").resolved_time_min == exe.DEFAULT_SLURM_TIME_MIN
    assert exe.ExecutorOptions("local").resolved_folder("r") == exe.default_folder("r")


def test_sweep_options_record_and_keyword_form_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sweep(..., force=True, …)`` and ``sweep(..., sweep_options=SweepOptions(force=True,
    …))`` hand submit and wait the same values; an unknown keyword is named."""
    from flatbook import executor_submit

    seen: list[tuple] = []

    class FakeSubmission:
        def wait(self, poll_s: float | None = None, progress: bool = False) -> list:
            seen.append(("wait", poll_s, progress))
            return []

    def fake_submit(configs: object, results_dir: object, options: object, *,
                    callback: object = None, force: bool = False,
                    setting: str | None = None) -> FakeSubmission:  # fmt: skip
        seen.append(("submit", options.kind, callback, force, setting))
        return FakeSubmission()

    monkeypatch.setattr(executor_submit, "submit", fake_submit)
    opts = exe.ExecutorOptions("slurm")
    flags = {"force": True, "setting": "digits-mlp", "progress": True, "poll_s": 0.5}
    exe.sweep(CONFIGS, "unused", opts, **flags)
    by_keywords = list(seen)
    seen.clear()
    exe.sweep(CONFIGS, "unused", opts, sweep_options=exe.SweepOptions(**flags))
    assert seen == by_keywords == [("submit", "slurm", None, True, "digits-mlp"),
                                   ("wait", 0.5, True)]  # fmt: skip
    seen.clear()
    exe.sweep(CONFIGS, "unused", opts, wait=False)
    assert seen == [("submit", "slurm", None, False, None)]  # submitted, not waited for
    assert exe.SweepOptions.from_flags(wait=False) == exe.SweepOptions(wait=False)
    with pytest.raises(TypeError, match=r"'forse'.*allowed: \['wait', 'callback', 'force'"):
        exe.sweep(CONFIGS, "unused", opts, forse=True)
    with pytest.raises(TypeError, match="not both"):
        exe.sweep(CONFIGS, "unused", opts, sweep_options=exe.SweepOptions(), force=True)
    with pytest.raises(ValueError, match="wait=False"):
        exe.sweep(CONFIGS, "unused", exe.ExecutorOptions("local"),
                  sweep_options=exe.SweepOptions(wait=False))


def test_executors_exports_every_public_name_of_its_modules() -> None:
    """Every function, class and constant of the split modules (and every public name
    ``flatbook.executors`` had before the split) is importable from ``flatbook.executors``."""
    import ast
    import inspect

    from flatbook import executor_cli, executor_jobs, executor_options, executor_submit

    before = {"ACTIVE_LOCAL", "DEFAULT_LOCAL_TIME_MIN", "DEFAULT_SLURM_TIME_MIN", "EXECUTORS",
              "ExecutorOptions", "Submission", "SweepJob", "add_arguments", "default_folder",
              "in_flight", "make_executor", "obtain_from_args", "options_from_args",
              "run_from_args", "run_study_one", "store_dir", "study_configs", "submit",
              "sweep", "trusted_pickle", "uses_ensembles"}  # fmt: skip
    assert before <= set(exe.__all__)
    for mod in (executor_cli, executor_jobs, executor_options, executor_submit):
        tree = ast.parse(inspect.getsource(mod))
        own = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        own |= {t.id for n in tree.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}  # fmt: skip
        public = {n for n in own if not n.startswith("_")}
        assert public, mod.__name__
        for name in public:
            assert getattr(exe, name) is getattr(mod, name), (mod.__name__, name)
            assert name in exe.__all__, name


STUDY_ARGS = (
    "--setting digits-mlp --lr 0.2 --batch-size 16 --seed 0 --steps 20 --measure-every 10 "
    "--n-train 64 --n-test 16 --eval-size 16"
).split()


def test_setting_runs_land_where_the_chapters_read_them(
    tmp_path: Path, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``sweep --setting NAME``: an experiment chapter's runs, with the chapters' measurements,
    in the store the chapters read (``flatbook.analysis.obtain(..., compute_missing=False)``
    accepts them); a Slurm array task (run in-process) and the inline executor agree."""
    from flatbook import analysis

    setting = analysis.get_setting("digits-mlp")
    a, b = tmp_path / "slurm", tmp_path / "inline"
    assert main(["sweep", *STUDY_ARGS, "--results-dir", str(a), "--executor", "slurm",
                 "--no-wait"]) == 0  # fmt: skip
    script = (fake_slurm / "sbatch_script.sh").read_text()
    _run_task_as_slurm(script, "4242", None, monkeypatch)  # a single job: not an array
    assert main(["sweep", *STUDY_ARGS, "--results-dir", str(b), "--executor", "inline"]) == 0
    assert "inline executor: 1 job(s) submitted" in capsys.readouterr().out
    (cfg,) = analysis.study_configs("digits-mlp", lrs=[0.2], batch_sizes=[16], seeds=[0],
                                    steps=20, measure_every=10, n_train=64, n_test=16,
                                    eval_size=16)  # fmt: skip
    (ra,) = analysis.obtain([cfg], setting, a, compute_missing=False)
    (rb,) = analysis.obtain([cfg], setting, b, compute_missing=False)
    assert "test_trace_hessian" in ra.records[-1] and "l1_kappa" in ra.records[-1]
    _same_numbers(ra.records, rb.records)
    assert main(["sweep", *STUDY_ARGS, "--results-dir", str(b), "--executor", "inline"]) == 0
    assert "0 job(s) submitted, 1 finished run(s) skipped" in capsys.readouterr().out


# ------------------------------------------------------------------------------ trust


class _Planted:
    """A pickle that runs code when loaded (touches a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_executor_state_lives_outside_the_store_and_planted_pickles_are_not_loaded(
    tmp_path: Path, executor_dir: Path
) -> None:
    import pickle

    store = tmp_path / "results"
    folder = exe.ExecutorOptions("local").resolved_folder(store)
    assert executor_dir in folder.parents and store not in folder.parents
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0  # private to this user
    assert exe.default_folder(store) == folder  # the same store → the same folder (ledger)
    assert exe.default_folder(tmp_path / "other") != folder
    # a result pickle planted in a folder others can write (e.g. a shared store) is refused
    shared = store / ".submitit"
    (shared / "7").mkdir(parents=True)
    shared.chmod(0o777)
    (shared / "7").chmod(0o777)
    marker = tmp_path / "code-ran"
    planted = shared / "7" / "7_result.pkl"
    planted.write_bytes(pickle.dumps(("error", _Planted(marker))))
    job = SimpleNamespace(job_id="7", paths=SimpleNamespace(
        result_pickle=planted, folder=shared / "7", stderr=shared / "7" / "7_log.err"))
    err = exe._job_error(job, shared)
    assert err is not None and "not loaded" in err and "written by another user" in err
    assert not marker.exists()
    link = shared / "7" / "link_result.pkl"
    link.symlink_to(planted)
    assert "not a regular file" in str(exe.trusted_pickle(link, shared))
    # the same file in the private default folder is trusted (its own job wrote it)
    (folder / "7").mkdir()
    own = folder / "7" / "7_result.pkl"
    own.write_bytes(pickle.dumps(("error", "RuntimeError: boom")))
    assert exe.trusted_pickle(own, folder) is None
    job.paths = SimpleNamespace(result_pickle=own, folder=folder / "7", stderr="log")
    assert "failed: RuntimeError: boom" in str(exe._job_error(job, folder))


def test_cli_and_executor_modules_keep_the_house_rules() -> None:
    """The command line and executor modules: functions ≤ 50 code lines and ≤ 8 parameters,
    modules ≤ 550 lines, docstrings (``scripts/house_rules.py``)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("house_rules",
                                                  root / "scripts" / "house_rules.py")
    assert spec is not None and spec.loader is not None
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    files = ["executors.py", "executor_options.py", "executor_jobs.py", "executor_submit.py",
             "executor_cli.py", "__main__.py", "cli_show.py"]
    out = [o for f in files for o in rules.offences(root / "flatbook" / f, 50, 8, 550)]
    assert out == []
