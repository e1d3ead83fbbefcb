"""Command line: ``python -m flatbook run|sweep|show`` (also installed as ``flatbook``).

Examples::

    python -m flatbook run                                  # the default digits MLP run
    python -m flatbook run --model lenet5 --lr 0.05 --steps 5000 --no-progress
    python -m flatbook run --dataset cifar10 --classes 3 5 --model vgg11 --device auto
    python -m flatbook sweep --lr 0.05 0.1 0.2 --batch-size 8 32 --seed 0 1
    python -m flatbook sweep --lr 0.05 0.1 --seed 0 1 --executor slurm --partition gpu --gpus 1 \\
        --device auto                                   # one Slurm job per config
    python -m flatbook show results/

Unspecified options take the defaults of :class:`flatbook.experiment.RunConfig` (or of the
JSON file given with ``--config``). Interrupt a run with Ctrl-C (or SIGTERM): the state is
checkpointed, and the same command resumes it. Finished runs are never recomputed (use
``--overwrite`` for ``run``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flatbook import data as _data
from flatbook import models as _models
from flatbook import train as _train

GRID_AXES = ("model", "lr", "batch_size", "seed", "momentum", "weight_decay")


def _batch(v: str) -> int | str:
    if v == "full":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'full': {v!r}") from None


def _opt_int(v: str) -> int | None:
    if v.lower() in ("none", "0"):
        return None
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'none': {v!r}") from None


def _kv(v: str) -> tuple[str, Any]:
    if "=" not in v:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {v!r}")
    k, raw = v.split("=", 1)
    try:
        val = json.loads(raw)
    except json.JSONDecodeError:
        val = raw
    return k.strip(), val


def _add_config_args(p: argparse.ArgumentParser, grid: bool) -> None:
    S = argparse.SUPPRESS
    many = {"nargs": "+"} if grid else {}

    def axis(name: str) -> dict:
        return many if name in GRID_AXES else {}

    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model", default=S, **axis("model"), help=f"one of {sorted(_models.MODELS)} (default mlp)"
    )
    g.add_argument(
        "--model-kw",
        dest="model_kw",
        nargs="+",
        type=_kv,
        default=S,
        metavar="KEY=VALUE",
        help="model options, JSON values, e.g. hidden=[64,64] activation=tanh",
    )
    g.add_argument("--dataset", default=S, help=f"one of {sorted(_data.DATASETS)} (default digits)")
    g.add_argument(
        "--classes",
        nargs="+",
        type=int,
        default=S,
        help="labels to keep (several numbers), or a count c (one number: 0..c-1)",
    )
    g.add_argument("--n-train", dest="n_train", type=int, default=S)
    g.add_argument("--n-test", dest="n_test", type=int, default=S)
    g.add_argument("--standardize", default=S, help=f"one of {list(_data.STANDARDIZE)}")
    g.add_argument("--data-seed", dest="data_seed", type=int, default=S)
    g.add_argument(
        "--data-dir",
        dest="data_dir",
        default=S,
        help="folder holding mnist/, fashion_mnist/, cifar10/ (default $FLATBOOK_DATA or ./data)",
    )
    g.add_argument("--dtype", default=S, help=f"one of {sorted(_data.DTYPES)}")

    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", default=S, help=f"one of {list(_train.LOSS_NAMES)} (default squared)")
    g.add_argument("--optimizer", default=S, help=f"one of {list(_train.OPTIMIZERS)} (default sgd)")
    g.add_argument("--lr", type=float, default=S, **axis("lr"), help="learning rate η")
    g.add_argument("--momentum", type=float, default=S, **axis("momentum"))
    g.add_argument(
        "--weight-decay", dest="weight_decay", type=float, default=S, **axis("weight_decay")
    )
    g.add_argument("--nesterov", action="store_true", default=S)
    g.add_argument(
        "--batch-size",
        dest="batch_size",
        type=_batch,
        default=S,
        **axis("batch_size"),
        help="B, or 'full' for full-batch gradient descent",
    )
    g.add_argument("--steps", type=int, default=S, help="optimizer steps (default 30000)")
    g.add_argument("--epochs", type=float, default=S, help="instead of --steps")
    g.add_argument(
        "--seed", type=int, default=S, **axis("seed"), help="initialisation and batch-order seed"
    )
    g.add_argument("--divergence-threshold", dest="divergence_threshold", type=float, default=S)

    g = p.add_argument_group("measurements")
    g.add_argument("--measure-every", dest="measure_every", type=int, default=S)
    g.add_argument("--schedule", default=S, help=f"one of {list(_train.SCHEDULES)}")
    g.add_argument(
        "--measures",
        nargs="*",
        default=S,
        help=f"subset of {list(_train.MEASURES)} (none: losses/accuracies only)",
    )
    g.add_argument("--eval-size", dest="eval_size", type=int, default=S)
    g.add_argument("--sharpness-tol", dest="sharpness_tol", type=float, default=S)
    g.add_argument("--target-loss", dest="target_loss", type=float, default=S)

    g = p.add_argument_group("execution")
    g.add_argument("--config", type=Path, help="JSON file with RunConfig fields (flags override)")
    g.add_argument(
        "--results-dir",
        dest="results_dir",
        default="results",
        type=Path,
        help="result store (default ./results)",
    )
    g.add_argument("--device", default=S, help="cpu, cuda or auto")
    g.add_argument("--threads", type=_opt_int, default=S, help="torch threads (none: auto)")
    g.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=_opt_int,
        default=S,
        help="steps between checkpoints (none: only at the end / on interrupt)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)


def build_parser() -> argparse.ArgumentParser:
    """The ``flatbook`` argument parser (sub-commands run, sweep, show)."""
    parser = argparse.ArgumentParser(
        prog="flatbook",
        description="Train networks into the late phase and record sharpness, trace and "
                    "representation geometry (flatbook, Chen et al. arXiv 2310.01770).",
        epilog="Results go to RESULTS_DIR/<run_id>/{config.json,checkpoint.pt,results.json}.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run (or resume) one configuration",
                           description="Run or resume one configuration.")  # fmt: skip
    _add_config_args(p_run, grid=False)
    p_run.add_argument("--overwrite", action="store_true", help="recompute a finished run")
    p_sweep = sub.add_parser(
        "sweep", help="run a grid of configurations",
        description="Cartesian grid over " + ", ".join("--" + a.replace("_", "-")
                                                       for a in GRID_AXES)
        + " (several values each); finished runs are skipped, failures do not stop the sweep.",
    )  # fmt: skip
    _add_config_args(p_sweep, grid=True)
    from flatbook.executors import add_arguments as _add_executor_args

    _add_executor_args(p_sweep)  # --executor local|slurm and the Slurm options
    p_show = sub.add_parser("show", help="list stored runs", description="List stored runs.")
    p_show.add_argument("results_dir", nargs="?", default="results", type=Path)
    p_show.add_argument("--all", action="store_true", help="include failed runs")
    return parser


def _config_fields(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    from flatbook.experiment import RunConfig

    base: dict[str, Any] = {}
    if getattr(ns, "config", None) is not None:
        try:
            base = json.loads(Path(ns.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"--config {ns.config}: {e}")
        if "config" in base and isinstance(base["config"], dict):  # a stored config.json
            base = base["config"]
    fields = {f for f in RunConfig.__dataclass_fields__}
    d = dict(base)
    for k, v in vars(ns).items():
        if k in fields:
            d[k] = v
    if "model_kw" in vars(ns):
        d["model_kw"] = dict(ns.model_kw)
    if isinstance(d.get("classes"), list) and len(d["classes"]) == 1:
        d["classes"] = d["classes"][0]
    if "measures" in d and isinstance(d["measures"], list):
        d["measures"] = tuple(m for m in d["measures"] if m != "none")
    if "epochs" in vars(ns) and "steps" not in vars(ns):
        d["steps"] = None
    if "steps" in vars(ns) and "epochs" not in vars(ns):
        d.pop("epochs", None)
    return d


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _summary_line(s: dict[str, Any]) -> str:
    f = s.get("final") or {}
    parts = [
        s["run_id"],
        s["status"] + (" (skipped: already finished)" if s.get("skipped") else ""),
    ]
    for k in ("step", "train_loss", "test_acc", "lambda_max", "trace_gn"):
        if k in f:
            parts.append(f"{k}={_fmt(f[k])}")
    if s.get("error"):
        parts.append(f"error: {s['error']}")
    return "  ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flatbook`` / the ``flatbook`` console script."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    from flatbook import experiment as ex

    if ns.command == "show":
        try:
            runs = ex.load_results(
                ns.results_dir, check="none",
                status=ex.STATUSES if ns.all else ex.FINISHED,
            )  # fmt: skip
        except ValueError as e:
            parser.error(str(e))
        for r in runs:  # type: ignore[union-attr]
            print(_summary_line({"run_id": r.config.run_id, "status": r.status,
                                 "final": r.final, "error": r.data.get("error")}))  # fmt: skip
        if not runs:
            print(f"no results in {ns.results_dir}")
        return 0

    fields = _config_fields(ns, parser)
    try:
        if ns.command == "run":
            cfg = ex.RunConfig.from_dict(fields)
            res = ex.run(cfg, ns.results_dir, overwrite=ns.overwrite)
            print(_summary_line({"run_id": cfg.run_id, "status": res.status,
                                 "final": res.final}))  # fmt: skip
            print(f"results: {res.run_dir / 'results.json'}")
            return 0
        axes = {k: fields.pop(k) for k in GRID_AXES if isinstance(fields.get(k), list)}
        from flatbook import executors

        if ns.setting:  # an experiment chapter's sweep (flatbook.analysis), its measurements
            configs = executors.study_configs(ns.setting, fields, axes)
            base = configs[0]
        else:
            base = ex.RunConfig.from_dict(fields)
            configs = ex.grid(base, **axes) if axes else [base]
        ex.validate(configs)  # data-dependent checks before the first run starts
        if ns.executor != "inline" or ns.setting:
            ex_options = executors.options_from_args(ns)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.exit(2, f"flatbook {ns.command}: error: {e}\n")
    except KeyboardInterrupt as e:
        parser.exit(130, f"flatbook: interrupted ({e}); run the same command again to resume\n")
    except Exception as e:  # noqa: BLE001 - recorded in results.json
        parser.exit(1, f"flatbook {ns.command}: run failed: {type(e).__name__}: {e}\n")
    try:
        if ns.executor != "inline" or ns.setting:
            summaries = executors.run_from_args(configs, ns, ex_options)
            if summaries is None:  # --no-wait: submitted; the same command gathers later
                return 0
        else:
            summaries = ex.sweep(configs, ns.results_dir, progress=base.progress)
    except KeyboardInterrupt as e:
        parser.exit(130, f"flatbook: interrupted ({e}); run the same command again to resume\n")
    except (ValueError, RuntimeError) as e:  # executor set-up (e.g. no Slurm on this machine)
        parser.exit(2, f"flatbook {ns.command}: error: {e}\n")
    for s in summaries:
        print(_summary_line(s))
    n_failed = sum(s["status"] not in ex.FINISHED for s in summaries)
    extra = sorted({s["status"] for s in summaries} - set(ex.STATUSES))  # interrupted, in_flight
    print(f"{len(summaries)} runs: " + ", ".join(
        f"{st} {sum(s['status'] == st for s in summaries)}" for st in (*ex.STATUSES, *extra)
    ) + f"; results in {ns.results_dir}")  # fmt: skip
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
