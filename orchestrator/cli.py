"""`sweep`: run, validate and plan sweep specs; status, stop and leaderboard of the results store.

Exit codes: 0 success, 1 some trials failed or were interrupted, 2 invalid spec or usage (nothing run
or written), 130 stopped by Ctrl-C / SIGTERM (running trials marked interrupted; re-run to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.quiet import quiet_third_party
from orchestrator.planning.loading import load_spec
from sweeps.spec import STORE_ENV, OutputConfig, SpecError, store_url
from results.busy import StoreLocked

DEFAULT_STORE = OutputConfig().store_url()
SET_HELP = ("override one dotted key of the spec, e.g. model.name=./tiny or search.grid.lora.rank=[4,8] "
            "(repeatable; the value is YAML; validated with the file and stored with the sweep's spec)")
WHERE_HELP = ("show only trials whose swept setting (or kind, status, name) has this value, e.g. prompt=v2 or "
              "lora.rank=16 (repeatable: all must hold; a kept fine-tune keeps its zero-shot baseline)")
SWEEP_HELP = "sweep name (default: the latest), or its spec file (then read from the store the spec names)"


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StoreLocked as exc:  # another process held the store past the wait limit (results.busy)
        print(exc, file=sys.stderr)
        return 1


def _run(args) -> int:
    spec = load_spec(args.spec, args.set)
    from orchestrator.driver.control import SweepBusy, graceful_stop
    from orchestrator.planning.prepare import PrepareError, prepare
    from orchestrator.search.strategies import search_for
    from orchestrator.search.study import StudyMismatch
    from orchestrator.driver.sweep import live_driver_check, run_sweep
    from results.store import Store

    try:
        prepared = prepare(spec)  # before Ray starts
        store = Store(store_url(args.store, spec.output))
        live_driver_check(store, spec.name)
        search_for(spec).check_stored(store.url)
    except (PrepareError, SweepBusy, StudyMismatch) as exc:
        print(f"{args.spec}: {exc}; nothing was run or written", file=sys.stderr)
        return 2
    from orchestrator.driver.placement import Unschedulable
    from orchestrator.backends.ray_backend import RayBackend

    with graceful_stop() as stop:
        backend = RayBackend(address=args.address or os.environ.get("RAY_ADDRESS"), num_cpus=args.num_cpus)
        try:
            outcome = run_sweep(spec, store, backend, show_progress=not args.quiet, prepared=prepared, stop=stop)
        except (SweepBusy, Unschedulable) as exc:  # claimed by another driver since the check above; or too big
            print(f"{args.spec}: {exc}; nothing was run or written", file=sys.stderr)
            return 2
        finally:
            backend.shutdown()
    print(f"sweep {outcome.sweep}: {len(outcome.completed)} completed, {len(outcome.reused)} reused, "
          f"{len(outcome.pruned)} pruned, {len(outcome.failed)} failed, {len(outcome.interrupted)} interrupted "
          f"in {outcome.wall_s:.0f} s; store {store.url}")
    for name in outcome.failed:
        print(f"  failed: {name} (its error: `sweep status {outcome.sweep}`; full log: its trial.log)")
    if outcome.stopped_by:
        print(f"  {outcome.stopped_by}: run the same command again to resume")
    if not args.quiet:
        print(_leaderboard_text(store, store.summary(outcome.sweep), "rougeL", "table"))
    if stop:
        return 130
    return 1 if outcome.failed or outcome.interrupted else 0


def _status(args) -> int:
    from orchestrator.driver.control import driver_alive
    from results import status

    store, sweep = _open_sweep(args, "status")
    if sweep is None:
        return 2
    summary = store.summary(sweep)
    render = status.render_json if args.format == "json" else status.render
    print(render(summary, driver_alive(summary.driver, summary.heartbeat_at)))
    return 0


def _show(args) -> int:
    from results import show

    store, sweep = _open_sweep(args, "show")
    if sweep is None:
        return 2
    found = store.trial(sweep, args.trial)
    if found is None:
        return _unknown_trial("show", sweep, args.trial, [t.name for t in store.summary(sweep).trials])
    trial, config = found
    names = {t.id: t.name for t in store.summary(sweep).trials}
    print(show.render(trial, config, store.curves(trial.id), store.predictions(sweep, args.trial), args.metric,
                      args.examples, names))
    return 0


def _report(args) -> int:
    from pathlib import Path

    from results import leaderboard, report
    from results.provenance import scoring_groups

    store, sweep = _open_sweep(args, "report")
    summary = _selected(store, sweep, args.where, "report")
    if summary is None:
        return 2
    rows = leaderboard.build(summary, args.metric, store.example_scores(sweep, args.metric))
    html = report.render(summary, rows, args.metric, {t.name: store.curves(t.id) for t in summary.trials},
                         {t.name: store.predictions(sweep, t.name) for t in summary.trials},
                         scoring_groups(summary.trials), args.examples, storage_url=store.url)
    out = Path(args.out or _sweep_dir(summary) / "report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    print(f"wrote {out} ({len(html) // 1024} KiB, {len(rows)} trials)")
    return 0


def _export(args) -> int:
    from pathlib import Path

    from orchestrator.export.bundle import ExportError, export

    store, sweep = _open_sweep(args, "export")
    if sweep is None:
        return 2
    summary = store.summary(sweep)
    name = args.trial if not args.best else _best_fine_tune(summary, args.metric)
    found = store.trial(sweep, name) if name else None
    if found is None or (args.trial is not None and args.best):
        fine_tunes = [t.name for t in summary.trials if t.kind == "trial" and t.status == "completed"]
        print(f"sweep export: name one completed fine-tune of {sweep}, or --best (not both); given "
              f"{args.trial!r}; allowed: {', '.join(fine_tunes) or 'none completed yet'}", file=sys.stderr)
        return 2
    trial, config = found
    out = Path(args.out or _sweep_dir(summary) / "export" / name)
    try:
        written = export(trial, config, trial.adapter_dir, sweep, out, merged=args.merged,
                         predictions=store.predictions(sweep, name), metric=args.metric)
    except ExportError as exc:
        print(f"sweep export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {name} of {sweep}: " + ", ".join(str(p) for p in written))
    return 0


def _unknown_trial(command: str, sweep: str, given: str, names: list[str]) -> int:
    print(f"sweep {command}: the trial must belong to sweep {sweep}; given {given!r}; allowed: {', '.join(names)}",
          file=sys.stderr)
    return 2


def _sweep_dir(summary):
    """<run_dir>/<sweep> as its driver stored it (absolute since 0.4)."""
    from pathlib import Path

    return Path(summary.run_dir or Path(summary.spec.get("output", {}).get("run_dir", "runs")) / summary.name)


def _best_fine_tune(summary, metric: str) -> str | None:
    from evaluation.metrics import metric as registered

    done = [t for t in summary.trials if t.kind == "trial" and t.status == "completed" and metric in t.metrics]
    return min(done, key=lambda t: registered(metric).best_first(t.metrics[metric])).name if done else None


def _steer(args) -> int:
    """clone, extend, resume: checked like a spec (exit 2, nothing written), then left for the driver."""
    from orchestrator.driver import steering
    from orchestrator.driver.control import driver_alive

    store, sweep = _open_sweep(args, args.command)
    if sweep is None:
        return 2
    if args.command == "clone":
        message = steering.clone(store, sweep, args.trial, args.set, args.warm_start, args.name).message
    elif args.command == "extend":
        message = steering.extend(store, sweep, args.trial, args.steps, args.epochs).message
    else:
        message = steering.resume(store, sweep, args.trial)
    summary = store.summary(sweep)
    when = (f"the live driver {summary.driver} picks it up within a few seconds"
            if driver_alive(summary.driver, summary.heartbeat_at)
            else f"no driver runs {sweep} now: the next `sweep run` of its spec runs it")
    print(f"{message}; {when} (see `sweep status {sweep}`)")
    return 0


def _stop(args) -> int:
    from orchestrator.driver.control import driver_alive

    store, sweep = _open_sweep(args, "stop")
    if sweep is None:
        return 2
    summary = store.summary(sweep)
    names = [t.name for t in summary.trials]
    if args.trial is not None and args.trial not in names:
        return _unknown_trial("stop", sweep, args.trial, names)
    what = f"trial {args.trial}" if args.trial else "every trial"
    if driver_alive(summary.driver, summary.heartbeat_at):
        store.control.request_stop(sweep, args.trial)
        print(f"asked the driver {summary.driver} to stop {what} of {sweep}; it acts within a few seconds "
              f"(see `sweep status {sweep}`)")
        return 0
    ended = store.lease.interrupt_unfinished(sweep, "its driver was gone; marked interrupted by `sweep stop`",
                                       summary.driver)
    if ended is None:
        print(f"sweep {sweep} was claimed by a new driver just now; nothing changed. Run `sweep stop {sweep}` "
              "again to ask it to stop", file=sys.stderr)
        return 2
    print(f"sweep {sweep} has no live driver; {len(ended)} unfinished trial(s) marked interrupted"
          + (f": {', '.join(ended)}" if ended else ""))
    return 0


def _validate(args) -> int:
    spec = load_spec(args.spec, args.set)
    from orchestrator.search.strategies import search_for

    search = search_for(spec)
    extra = f" + a study of {search.proposals} trials" if search.proposals else ""
    print(f"{args.spec}: valid; {len(search.planned())} runs{extra}")
    return 0


def _plan(args) -> int:
    spec = load_spec(args.spec, args.set)
    from orchestrator.planning.datachecks import data_lines, data_problems
    from orchestrator.search.strategies import search_for

    search = search_for(spec)
    plan = search.planned()
    datasets = list(dict.fromkeys(t.config.dataset for t in search.checked()))
    problems = [p for cfg in datasets if cfg != spec.dataset for p in data_problems(cfg)]  # spec's own: at load
    if problems:
        raise SpecError(args.spec, problems)
    width = max((len(t.name) for t in plan), default=0)
    for t in plan:
        shown = ", ".join(f"{k}={v}" for k, v in t.params.items())
        print(f"{t.name.ljust(width)}  {t.kind:<8}  {shown}")
    print(f"{len(plan)} runs ({sum(t.kind == 'trial' for t in plan)} fine-tunes, "
          f"{sum(t.kind == 'baseline' for t in plan)} zero-shot baselines)")
    if search.describe():
        print(search.describe())
    from orchestrator.driver.pack_sizing import plan_lines

    print("\n".join(plan_lines(((t.name, t.config) for t in plan), spec.resources.trials_per_worker)))
    for lines in map(data_lines, datasets):
        print("\n".join(["data:", *lines]) if lines else "data: from the hub, checked as it loads")
    return 0


def _leaderboard(args) -> int:
    store, sweep = _open_sweep(args, "leaderboard")
    summary = _selected(store, sweep, args.where, "leaderboard")
    if summary is None:
        return 2
    print(_leaderboard_text(store, summary, args.metric, args.format, args.bootstrap))
    return 0


def _selected(store, sweep: str | None, wheres: list[str], command: str):
    """The sweep's summary with the trials its --where filters keep; None (after saying why) if it cannot be."""
    from results.selection import SelectionError, select

    if sweep is None:
        return None
    try:
        return select(store.summary(sweep), wheres)
    except SelectionError as exc:
        print(f"sweep {command}: {exc}", file=sys.stderr)
        return None


def _compare(args) -> int:
    from types import SimpleNamespace

    from results.compare import CompareError, compare, render

    sides = []
    for given in (args.a, args.b):
        sweep, _, trial = given.partition(":") if not given.endswith((".yaml", ".yml")) else (given, "", "")
        store, name = _open_sweep(SimpleNamespace(sweep=sweep, store=args.store), "compare")
        if name is None:
            return 2
        trials = store.summary(name).trials
        picked = [t for t in trials if t.name == trial] if trial else trials
        if trial and not picked:
            return _unknown_trial("compare", name, trial, [t.name for t in trials])
        sides.append((name, picked, store.example_scores(name, args.metric)))
    (name_a, a, scores_a), (name_b, b, scores_b) = sides
    try:
        pairs = compare(a, b, scores_a, scores_b, args.metric, args.bootstrap)
    except CompareError as exc:
        print(f"sweep compare: {exc}", file=sys.stderr)
        return 2
    print(render(pairs, args.format, args.metric, name_a, name_b))
    return 0


def _open_sweep(args, command: str):
    """(store, sweep name) for a read command; sweep None after printing why it is not there. A spec path
    (`sweeps/x.yaml`, `x.yaml`) stands for its sweep, in the store its `output` names."""
    from orchestrator.planning.loading import spec_target
    from results.store import Store

    sweep, output = args.sweep, None
    if sweep and sweep.endswith((".yaml", ".yml")):
        sweep, output = spec_target(sweep)
    store = Store(store_url(args.store, output))
    names = store.sweep_names()
    sweep = sweep or (names[-1] if names else None)
    if sweep not in names:
        print(f"sweep {command}: the sweep must exist in the store; given {sweep!r}; "
              f"allowed: {', '.join(names) or 'none yet (run `sweep run SPEC` first)'}; store {store.url}",
              file=sys.stderr)
        return store, None
    return store, sweep


def _leaderboard_text(store, summary, metric: str, fmt: str, samples: int = 1000) -> str:
    from results import environment, leaderboard, repeats
    from results.provenance import scoring_groups

    sweep = summary.name
    rows = leaderboard.build(summary, metric, store.example_scores(sweep, metric), samples)
    return leaderboard.render(rows, fmt, metric, summary.notes, sweep, scoring_groups(summary.trials),
                              environment.sweep_lines(summary.trials), repeats.of_sweep(summary, metric))


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help line, handler, arguments (`_arg`), and a required either-or group."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    arguments: tuple = ()
    one_of: tuple = ()
    defaults: dict = field(default_factory=dict)


def _arg(*flags: str, **options) -> tuple[tuple[str, ...], dict]:
    return flags, options


def _commands() -> tuple[Command, ...]:
    """Every subcommand of `sweep`, in the order its help lists them."""
    from evaluation.metrics import rankable_names
    from results.leaderboard import FORMATS

    rankable = rankable_names()
    spec = (_arg("spec", help="spec file, or a file name inside sweeps/"),
            _arg("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP))
    sweep, latest = _arg("sweep", help=SWEEP_HELP), _arg("sweep", nargs="?", help=SWEEP_HELP)
    store = _arg("--store", help=f"SQLAlchemy URL (default: ${STORE_ENV}, else {DEFAULT_STORE})")
    metric = _arg("--metric", default="rougeL", choices=rankable)
    where = _arg("--where", action="append", default=[], metavar="KEY=VALUE", help=WHERE_HELP)
    bootstrap = "resamples of the eval examples for the 95%% intervals (default 1000)"
    return (
        Command("run", "run every trial of a spec through Ray", _run, (
            *spec, _arg("--store", help=f"SQLAlchemy URL of the results store (default: the spec's, ${STORE_ENV})"),
            _arg("--address", help="existing Ray cluster to use (default: $RAY_ADDRESS, else a local one)"),
            _arg("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)"),
            _arg("--quiet", action="store_true", help="no progress line and no leaderboard at the end"))),
        Command("validate", "check a spec; report every problem", _validate, (_arg("spec"), spec[1])),
        Command("plan", "print the trials a spec expands to, without running", _plan, (_arg("spec"), spec[1])),
        Command("leaderboard", "rank the trials of a sweep, from the store only", _leaderboard, (
            latest, metric, _arg("--format", default="table", choices=FORMATS),
            _arg("--bootstrap", type=int, default=1000, metavar="N", help=bootstrap), where, store)),
        Command("compare", "the same trials in two sweeps, on shared examples, with paired intervals", _compare, (
            _arg("a", help="sweep A (name or spec file), or SWEEP:TRIAL for one trial"),
            _arg("b", help="sweep B, or SWEEP:TRIAL"), metric,
            _arg("--format", default="table", choices=("table", "json")),
            _arg("--bootstrap", type=int, default=1000, metavar="N", help="paired resamples (default 1000)"),
            _arg("--store", help=f"SQLAlchemy URL of the results store (default: ${STORE_ENV})"))),
        Command("status", "each trial's state, progress and worker; whether a driver is alive", _status, (
            latest, _arg("--format", default="table", choices=("table", "json"),
                         help="json: one object per trial, for scripts"), store)),
        Command("show", "one trial: settings, curves, worst and best predictions with references", _show, (
            sweep, _arg("trial", help="trial name (see `sweep status`)"),
            _arg("--metric", default="rougeL", choices=rankable, help="orders the examples"),
            _arg("--examples", type=int, default=3, help="worst and best examples shown (default 3 each)"), store)),
        Command("report", "write a self-contained HTML report of a sweep", _report, (
            latest, _arg("--out", help="HTML file (default: <run_dir>/<sweep>/report.html)"), metric,
            _arg("--examples", type=int, default=3, help="worst and best predictions per trial (default 3 each)"),
            where, store)),
        Command("export", "a trial's adapter (optionally merged into its base) with a model card", _export, (
            sweep, _arg("trial", nargs="?", help="trial name; or --best"),
            _arg("--best", action="store_true", help="the completed fine-tune with the highest --metric"), metric,
            _arg("--merged", action="store_true", help="also write the base model with the adapter merged in"),
            _arg("--out", help="folder (default: <run_dir>/<sweep>/export/<trial>)"), store)),
        Command("stop", "stop a running sweep, or one of its trials, from another terminal", _stop, (
            sweep, _arg("trial", nargs="?", help="one trial (default: the whole sweep)"), store)),
        Command("clone", "add a trial with a trial's settings changed, cold or warm from its checkpoint", _steer, (
            sweep, _arg("trial", help="the trial to clone"),
            _arg("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a setting to change, e.g. training.learning_rate=1e-4 (repeatable; the value is YAML)"),
            _arg("--warm-start", action="store_true",
                 help="start from the trial's last checkpoint: adapter, data position and step count "
                      "(optimizer and schedule fresh when a training key changed)"),
            _arg("--name", help="the new trial's name (default: the parent's, then the changed values)"), store),
            defaults={"command": "clone"}),
        Command("extend", "continue a completed trial (final checkpoint kept) to a larger budget", _steer, (
            sweep, _arg("trial", help="the completed trial (training.keep_final_checkpoint: true)"), store),
            one_of=(_arg("--steps", type=int, help="the new budget in optimizer steps (more than it took)"),
                    _arg("--epochs", type=float, help="the new budget in epochs")),
            defaults={"command": "extend"}),
        Command("resume", "run a stopped (interrupted) trial again from its checkpoint", _steer, (
            sweep, _arg("trial", help="the interrupted trial"), store), defaults={"command": "resume"}),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in _commands():
        p = sub.add_parser(command.name, help=command.help)
        if command.one_of:
            group = p.add_mutually_exclusive_group(required=True)
            for flags, options in command.one_of:
                group.add_argument(*flags, **options)
        for flags, options in command.arguments:
            p.add_argument(*flags, **options)
        p.set_defaults(handler=command.handler, **command.defaults)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
