"""The `python -m core` command line: train a built-in model, list runs, show one as JSON, diagnose one, recover one,
import a run zip.

Only `train` and `recover` import TensorFlow; the read commands use the numpy-only store reader.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from core.settings import STAGE_PREFIX, spec_settings, text
from core.store import RunStore, StoreError, to_json_safe

EXIT_FINDINGS = 1  # `diagnose` found a problem: CI pipelines can gate on training health
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, StoreError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `python -m core show RUN --json | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    prog = "strata" if os.path.basename(sys.argv[0]) == "strata" else "python -m core"
    parser = argparse.ArgumentParser(prog=prog, description="Strata: record and inspect what hidden layers learn.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a built-in model and record it; prints the run id last")
    _add_training_flags(train)
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    train.set_defaults(handler=_train)

    runs = commands.add_parser("runs", help="list runs with status, data set and epochs")
    runs.add_argument("--runs", default="runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=_list_runs)

    show = commands.add_parser("show", help="summarise one run")
    show.add_argument("run")
    show.add_argument("--runs", default="runs")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)

    recover = commands.add_parser(
        "recover", help="write the snapshots a killed training process held back (needs TensorFlow)"
    )
    recover.add_argument("run")
    recover.add_argument("--runs", default="runs")
    recover.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, e.g. the one that registers the model's custom layers (repeatable)",
    )
    recover.set_defaults(handler=_recover)

    imports = commands.add_parser(
        "import",
        help="add a run from a zip archive (a run downloaded from the dashboard) under a new id; prints the id",
    )
    imports.add_argument("zip", help="the run's zip archive")
    imports.add_argument("--runs", default="runs")
    imports.add_argument("--name", help="display name of the imported run (default: the name it had)")
    imports.set_defaults(handler=_import)

    diagnose = commands.add_parser(
        "diagnose", help="name training problems (vanishing gradients, dead units, ...); exit 1 if any"
    )
    diagnose.add_argument("run")
    diagnose.add_argument("--runs", default="runs")
    diagnose.add_argument("--json", action="store_true", help="machine-readable output")
    diagnose.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a threshold, e.g. vanishing_ratio=1e-3 (repeatable; see core/DIAGNOSIS.md)",
    )
    diagnose.set_defaults(handler=_diagnose)
    return parser


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `TrainingSpec`, from the table in `core.settings` (defaults shared with the dashboard)."""
    for setting in spec_settings():
        help = setting.help if setting.public else argparse.SUPPRESS
        if setting.type is bool:
            parser.add_argument(setting.flag, action="store_true", help=help)
            continue
        if setting.public and setting.default is not None and "default" not in setting.help:
            help = f"{setting.help} (default {text(setting)})"
        if setting.type is tuple:  # layer sizes are typed as "32,32,32"; TrainingSpec.from_args parses them
            parser.add_argument(setting.flag, default=text(setting), metavar=setting.metavar, help=help)
        else:
            parser.add_argument(
                setting.flag, type=setting.type, default=setting.default, metavar=setting.metavar, help=help
            )


def _train(args: argparse.Namespace) -> int:
    from core.training.trainer import TrainingSpec, train

    spec = TrainingSpec.from_args(args)
    run_id = train(spec, progress=None if args.quiet else _print_progress, stage=_print_stage)
    print(run_id)
    return 0


def _print_stage(name: str) -> None:
    """One line as each stage of `train` begins, quiet or not: the dashboard reads them from a job's log."""
    print(f"{STAGE_PREFIX}{name}", file=sys.stderr, flush=True)


def _print_progress(epoch: int, epochs: int, logs: dict) -> None:
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in logs.items() if isinstance(v, float))
    print(f"epoch {epoch}/{epochs}  {metrics}", file=sys.stderr, flush=True)


def _list_runs(args: argparse.Namespace) -> int:
    summaries = RunStore(args.runs).list_runs()
    if args.json:
        print(json.dumps([s.__dict__ for s in summaries], indent=1))
        return 0
    if not summaries:
        print(f"No runs in {args.runs}. Start one with: python -m core train --dataset spiral")
        return 0
    rows = [
        (
            s.id,
            s.status + (f" ({s.unwritten} unwritten)" if s.unwritten else ""),
            s.dataset,
            f"{s.epochs_done}/{s.epochs_planned}" if s.epochs_planned else str(s.epochs_done),
            s.name,
        )
        for s in summaries
    ]
    width = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(("id", "status", "dataset"))]
    for row in [("id", "status", "dataset", "epochs", "name"), *rows]:
        print(f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]:<{width[2]}}  {row[3]:>7}  {row[4]}")
    for s in summaries:
        if s.damaged:  # listed, and skipped: only a command that names the run fails on it
            print(f"\n{s.id}: {s.damaged}")
        if s.unwritten:
            print(
                f"\n{s.id}: training was killed before {s.unwritten} of its snapshots were written. "
                f"Write them with: python -m core recover {s.id}"
                + (f" --runs {args.runs}" if args.runs != "runs" else "")
            )
    return 0


def _show(args: argparse.Namespace) -> int:
    from core.analysis.summary import run_summary

    run = RunStore(args.runs).run(args.run)
    summary = run_summary(run)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['name']} ({summary['id']}): {summary['status']}, {len(summary['epochs'])} snapshots")
    if summary["unwritten_snapshots"]:
        print(
            f"  {summary['unwritten_snapshots']} more were captured but not written when training was killed; "
            f"write them with: python -m core recover {run.id}"
            + (f" --runs {args.runs}" if args.runs != "runs" else "")
        )
    for line in run.lost_snapshots().lines():
        print(f"  lost: {line}")
    for name, why in summary["damaged_files"].items():
        if not name.startswith("snapshots/"):  # lost snapshots are listed above
            print(f"  damaged: {name} ({why}); the rest of the run is shown without it")
    for layer in summary["layers"]:
        print(
            f"  {layer['name']:<24} {layer['type'] or '':<20} {str(layer['output_shape'] or ''):<16} "
            f"{layer['params'] or 0:>8} params"
        )
    if len(summary["outputs"]) > 1:
        print("  outputs, the model on the probe at the last snapshot:")
        for output in summary["outputs"]:
            print(
                f"    {output['name']} ({output['kind'] or 'no targets'}{', primary' if output['primary'] else ''})"
                + _output_scores(output)
            )
    history = summary["metrics"]
    if history.get("loss"):
        print(
            f"final loss {history['loss'][-1]}  "
            + "  ".join(f"{k} {v[-1]}" for k, v in history.items() if k not in ("epoch", "loss") and v)
        )
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary["created"]))
    print(f"created {created}")
    problems = summary["diagnosis"]
    print(
        f"diagnosis: {len(problems)} finding(s)"
        + (
            f" ({', '.join(p['kind'] for p in problems)}); details: python -m core diagnose {run.id}"
            if problems
            else ", healthy"
        )
    )
    return 0


def _output_scores(output: dict) -> str:
    """ ": accuracy 0.70 (chance 0.56)" or ": squared error 2.09" of one `show --json` output entry; "" without."""
    accuracy, error = output.get("accuracy"), output.get("squared_error")
    if accuracy and accuracy[-1] is not None:
        chance = output.get("chance_accuracy")
        return f": accuracy {accuracy[-1]:.3g}" + (f" (chance {chance:.3g})" if chance is not None else "")
    if error and error[-1] is not None:
        return f": squared error {error[-1]:.3g}"
    return ""


def _recover(args: argparse.Namespace) -> int:
    import importlib

    from core.capture.recover import main as recover

    sys.path.insert(0, os.getcwd())  # the user's modules, as `python -m` finds them, whatever the entry point
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"--import {module}: {error}") from None
    return recover(args.runs, args.run)


def _import(args: argparse.Namespace) -> int:
    with open(args.zip, "rb") as archive:
        print(RunStore(args.runs).import_zip(archive, name=args.name))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from core.analysis.diagnosis import Thresholds, diagnose

    thresholds = Thresholds().with_overrides(args.threshold)
    run = RunStore(args.runs).run(args.run)
    if not run.epochs():  # no evidence is not health: a CI gate must not pass a run it could not read
        lost = " ".join(run.lost_snapshots().lines())
        raise StoreError(
            f"Run {run.id!r} has no readable snapshot, so there is nothing to diagnose." + (f" {lost}" if lost else "")
        )
    findings = diagnose(run, thresholds)
    for line in run.lost_snapshots().lines():  # the verdict rests on the snapshots that are left
        print(f"note: {line}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                to_json_safe(
                    {
                        "run": run.id,
                        "healthy": not findings,
                        "thresholds": asdict(thresholds),
                        "findings": [asdict(f) for f in findings],
                    }
                ),
                indent=1,
            )
        )
    elif not findings:
        print(f"{run.name} ({run.id}): no problems found in {len(run.epochs())} snapshots.")
    else:
        print(f"{run.name} ({run.id}): {len(findings)} problem(s)")
        for finding in findings:
            where = finding.layer or "model"
            if finding.output is not None and finding.output != finding.layer:
                where = f"{where} (output {finding.output})"
            print(f"\n[{finding.kind}] {where}, from epoch {finding.epoch}\n  {finding.message}")
    return EXIT_FINDINGS if findings else 0
