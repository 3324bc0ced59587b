"""Steering a sweep from another terminal: clone a trial with changed settings (cold, or warm from its
checkpoint), extend a finished one to a larger budget, resume a stopped one.

Each request is checked as a spec is (every problem at once, SpecError: exit 2, nothing written), then written
to the results store: a pending trial row with its parent and fork step, or a resume flag. A live driver picks
it up within seconds (as it does a stop request); otherwise the next `sweep run` of the sweep runs it.
A warm start snapshots the parent's last complete checkpoint into the child's folder at once: the parent goes
on and deletes its older checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sweeps import schema
from orchestrator.planning.budget import budget_problems
from orchestrator.planning.checks import swept_key_problem
from orchestrator.planning.loading import parse_override
from orchestrator.planning.plan import PlannedTrial, get_value, label, path_safe, run_problems, with_value
from orchestrator.planning.prepare import load_data
from sweeps.spec import SpecError, SweepSpec
from results.control_requests import ControlRequests
from results.states import TrialState
from results.store import Store, TrialSummary
from results.stored_spec import stored_spec
from trainer import checkpoints
from trainer.augment import training_examples
from trainer.config import ConfigProblem, TrialConfig, WarmStart
from trainer.identity import affects_baseline, content_key
from trainer.models import model_identity, model_problem

# What a checkpoint cannot carry to a child: its weights' shapes and layout, and its data position (counted in
# batches of the parent's size).
NOT_CARRIED = ("model.", "lora.rank", "lora.target_modules", "lora.use_dora", "quantization.", "training.method",
               "training.micro_batch_size", "training.gradient_accumulation_steps", "dataset.", "augmentation.")
_FORK_DIR = "fork"


@dataclasses.dataclass(frozen=True)
class Added:
    """A trial a steering command added: its name, and what the command prints."""

    name: str
    message: str


def clone(store: Store, sweep: str, parent_name: str, overrides: list[str], warm_start: bool = False,
          name: str | None = None) -> Added:
    """Add a fine-tune with `parent_name`'s config changed by `--set key=value` overrides."""
    source = f"sweep clone {sweep} {parent_name}"
    parent, config, spec = _parent(store, sweep, parent_name, source)
    problems: list[ConfigProblem] = []
    changed = _apply(config, overrides, spec, problems)
    child = config
    for key, value in changed.items():
        child = with_value(child, key, value, spec)
    problems += _clone_problems(changed, child, warm_start, overrides, bool(problems), parent.name)
    if name is not None or not problems:  # a derived name means little while the overrides are wrong
        name = name or "-".join([parent.name, *(label(k, get_value(child, k)) for k in changed)]
                                + (["warm"] if warm_start else []))
        problems += _name_problems(store, sweep, name)
    if problems:
        raise SpecError(source, problems)
    step, how = None, "cold, from step 0"
    if warm_start:
        fresh = any(key.startswith("training.") for key in changed)
        child, step = _warm(store, sweep, parent, child, name, fresh, source)
        how = f"warm from its checkpoint of step {step}" + (", optimizer and schedule fresh" if fresh else "")
    params = {**parent.params, **{k: get_value(child, k) for k in changed}}
    _add(store, sweep, name, params, child, "clone", parent, step, any(affects_baseline(k) for k in changed), source)
    return Added(name, f"added {name} to sweep {sweep}: a clone of {parent.name}, {how}")


def _clone_problems(changed: dict, child: TrialConfig, warm_start: bool, overrides: list[str], had_problems: bool,
                    parent: str) -> list[ConfigProblem]:
    """What a warm start cannot carry, a clone that changes nothing, the model, the run's rules, the budgets."""
    problems = [ConfigProblem(f"--set {key}", "a warm start continues the parent's checkpoint, which cannot carry "
                              "this change", changed[key], "training, generation and scoring keys, lora.alpha, "
                              "lora.dropout, prompt", "drop --warm-start (a cold clone), or drop this --set")
                for key in changed if warm_start and key.startswith(NOT_CARRIED)]
    if not changed and not warm_start and not had_problems:
        problems.append(ConfigProblem("--set", "a cold clone must change something (else it is the same trial)",
                                      overrides, "one or more key=value", "e.g. --set training.learning_rate=1e-4"))
    missing = model_problem(child.model.name) if "model.name" in changed else None
    if missing:
        problems.append(ConfigProblem("--set model.name", "the model must be loadable", child.model.name,
                                      "smollm2-135m-instruct, a local model directory, or a hub id", missing))
    problems += run_problems(child)
    if not problems and not had_problems:  # the token budgets load the tokenizer: only for a valid clone
        problems += budget_problems([child], [f"{parent}'s clone"])
    return problems


def extend(store: Store, sweep: str, parent_name: str, steps: int | None = None, epochs: float | None = None) -> Added:
    """Add a trial that continues `parent_name` (completed, final checkpoint kept) to a larger budget."""
    source = f"sweep extend {sweep} {parent_name}"
    parent, config, spec = _parent(store, sweep, parent_name, source)
    t = config.training
    problems = []
    if parent.status != TrialState.COMPLETED.value:
        problems.append(ConfigProblem(parent_name, "only a completed trial can be extended", parent.status,
                                      "completed", f"wait for it, or `sweep resume {sweep} {parent_name}`"))
    done_steps = parent.last_step or 0
    if (steps is None) == (epochs is None):
        problems.append(ConfigProblem("--steps/--epochs", "give the new budget one way", [steps, epochs],
                                      "--steps N or --epochs E", f"e.g. --steps {2 * max(done_steps, 1)}"))
    elif steps is not None and steps <= done_steps:
        problems.append(ConfigProblem("--steps", "an extension must train further than its parent did", steps,
                                      f"> {done_steps} (its steps)", f"--steps {2 * max(done_steps, 1)}"))
    if problems:
        raise SpecError(source, problems)
    budget = {"max_steps": steps, "epochs": None} if steps is not None else {"epochs": epochs, "max_steps": None}
    child = dataclasses.replace(config, training=dataclasses.replace(t, **budget))
    name = f"{parent.name}-to{steps}" if steps is not None else f"{parent.name}-to{label('training.epochs', epochs)}ep"
    problems = run_problems(child) + _name_problems(store, sweep, name)
    if problems:
        raise SpecError(source, problems)
    child, step = _warm(store, sweep, parent, child, name, False, source, extension=True)
    params = {**parent.params, "training.max_steps" if steps is not None else "training.epochs": steps or epochs}
    _add(store, sweep, name, params, child, "extend", parent, step, False, source)
    return Added(name, f"added {name} to sweep {sweep}: {parent.name} continued from its step {step} "
                       f"to {steps or epochs} {'steps' if steps is not None else 'epochs'}, then evaluated again")


def resume(store: Store, sweep: str, trial_name: str) -> str:
    """Ask for a stopped trial to run again from its checkpoint; returns what to print."""
    summary = store.summary(sweep)
    found = {t.name: t for t in summary.trials}
    trial = found.get(trial_name)
    if trial is None:
        raise SpecError(f"sweep resume {sweep}", [ConfigProblem("TRIAL", "must name a trial of the sweep", trial_name,
                                                                ", ".join(found), schema.did_you_mean(trial_name, found))])
    if trial.status != TrialState.INTERRUPTED.value:
        raise SpecError(f"sweep resume {sweep}", [ConfigProblem(
            trial_name, "only a stopped (interrupted) trial is resumed", trial.status, "interrupted",
            "a failed trial runs again on the next `sweep run`; a completed one: `sweep extend`")])
    store.control.request_resume(sweep, trial_name)
    return f"{trial_name} will run again from its last checkpoint"


def added_plan(control: ControlRequests, sweep_id: int, known: set[int] = frozenset()) -> list[PlannedTrial]:
    """The trials added to a sweep while it ran, as the driver plans them (after the spec's own); the rows in
    `known` (ids the driver has already) are neither read nor built again."""
    out = []
    for _, name, params, config, baseline in control.added_trials(sweep_id, known):
        ignored: list = []  # written by this version's clone or extend: it builds
        typed = schema.build(TrialConfig, config, "", ignored)
        out.append(PlannedTrial(name, "trial", params, typed, tuple(params), baseline=baseline))
    return out


def _parent(store: Store, sweep: str, name: str, source: str) -> tuple[TrialSummary, TrialConfig, SweepSpec]:
    found = store.trial(sweep, name)
    summary = store.summary(sweep)
    if found is None:
        names = [t.name for t in summary.trials]
        raise SpecError(source, [ConfigProblem("TRIAL", "must name a trial of the sweep", name, ", ".join(names),
                                               schema.did_you_mean(name, names))])
    trial, config = found
    if trial.kind != "trial":
        raise SpecError(source, [ConfigProblem("TRIAL", "must be a fine-tune (a zero-shot run has no adapter)", name,
                                               "a fine-tune of the sweep", "")])
    ignored: list = []
    return trial, schema.build(TrialConfig, config, "", ignored), stored_spec(summary)


def _apply(config: TrialConfig, overrides: list[str], spec: SweepSpec, problems: list[ConfigProblem]) -> dict:
    """{dotted key: typed value} of the `--set` overrides; every problem found is appended."""
    changed: dict[str, Any] = {}
    for override in overrides:
        parsed = parse_override(override, problems)
        if parsed is None or swept_key_problem(parsed[0], f"--set {parsed[0]}", problems):
            continue
        key, value = parsed
        if key == "prompt" and value not in spec.prompts:
            problems.append(ConfigProblem(f"--set {key}", "must name one of the sweep's templates", value,
                                          ", ".join(spec.prompts), schema.did_you_mean(str(value), spec.prompts)))
            continue
        before = len(problems)
        typed = value if key == "prompt" else schema.check_value(TrialConfig, key, value, f"--set {key}", problems)
        if len(problems) == before:
            changed[key] = typed
    return {k: v for k, v in changed.items() if get_value(config, k) != v}  # a value it already has is no change


def _name_problems(store: Store, sweep: str, name: str) -> list[ConfigProblem]:
    if not path_safe(name):
        return [ConfigProblem("--name", "a trial name becomes a folder name", name, "letters, digits, _ . ~ + -",
                              "give --name with those characters only")]
    if store.trial(sweep, name) is not None:
        return [ConfigProblem("--name", "every trial needs its own name (its folder and store row)", name,
                              "a name no trial of the sweep has", "give --name NEW_NAME")]
    return []


def _warm(store: Store, sweep: str, parent: TrialSummary, child: TrialConfig, name: str, fresh: bool,
          source: str, extension: bool = False) -> tuple[TrialConfig, int]:
    """The child with a warm start from a snapshot of the parent's last complete checkpoint, and its step."""
    run_dir = Path(store.summary(sweep).run_dir or ".")
    checkpoint, step = checkpoints.latest_complete(run_dir / "trials" / parent.name)
    if checkpoint is None:
        what, allowed, fix = (
            ("an extension needs the parent's final checkpoint", "a trial that ran with training.keep_final_checkpoint:"
             " true", "set it in the spec and run the parent again (a new name, or after a change of its settings)")
            if extension else
            ("a warm start needs a complete checkpoint of the parent", "a running trial with "
             "training.checkpoint_interval_steps set, or a finished one with training.keep_final_checkpoint: true",
             "set those keys in the spec and run the parent again, or clone cold"))
        raise SpecError(source, [ConfigProblem(parent.name, what, "none kept", allowed, fix)])
    no_steps = _zero_step_problem(child, name, step, extension)
    if no_steps:
        raise SpecError(source, [no_steps])
    snapshot = checkpoints.snapshot(checkpoint, run_dir / "trials" / name / _FORK_DIR)
    warm = WarmStart(str(snapshot), step, parent.content_key or "", fresh)
    return dataclasses.replace(child, warm_start=warm), step


def _zero_step_problem(child: TrialConfig, name: str, step: int, extension: bool) -> ConfigProblem | None:
    """A warm child resumes at its parent's `step` and trains up to its own budget: a budget at or below that step
    trains nothing, and its row would repeat the parent's scores under the child's settings."""
    t = child.training
    if t.max_steps is not None:
        total, flag = t.max_steps, "--steps" if extension else "--set training.max_steps"
    else:
        rows = len(training_examples(load_data(PlannedTrial(name, "trial", {}, child)), child.augmentation))
        total, flag = t.total_steps(rows), "--epochs" if extension else "--set training.epochs"
    if total > step:
        return None
    value = 2 * step if t.max_steps is not None else round(2 * (t.epochs or 1), 2)
    return ConfigProblem(flag, f"a warm start goes on from the parent's step {step} to the child's budget, so the "
                         "budget must be above it (else no step runs and the child repeats its parent's scores)",
                         f"{total} steps", f"> {step} steps", f"{flag}{' ' if extension else '='}{value}")


def _add(store: Store, sweep: str, name: str, params: dict, child: TrialConfig, origin: str, parent: TrialSummary,
         step: int | None, new_baseline: bool, source: str) -> None:
    planned = PlannedTrial(name, "trial", params, child)
    key = content_key(child, load_data(planned), model_identity(child.model.name))
    added = store.control.add_trial(sweep, name, params, dataclasses.asdict(child), key, origin, parent.id, step,
                            None if new_baseline else parent.baseline)
    if added is None:  # taken between the check and now, by another terminal
        raise SpecError(source, _name_problems(store, sweep, name))
