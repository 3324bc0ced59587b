"""Which trials share a worker (trainer.packing, orchestrator.driver.pack_sizing) and how the driver runs packs: every config
key classified, packs formed by compatibility, an out-of-memory pack split in halves, one trial stopped out of
its pack; in-process on a scripted backend with real SQLite."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.planning.loading import parse_spec
from orchestrator.driver.pack_sizing import AUTO_TRIALS_PER_WORKER, pack_size
from orchestrator.driver.sweep import run_sweep
from results.states import TrialState as S
from results.store import Store
from tests.conftest import tiny_spec
from tests.scripted import HANG, Fail, Finish, ScriptedBackend
from tests.test_lifecycle import SCORES, Recorder
from trainer import events as ev
from trainer.config import TrialConfig, WarmStart
from trainer.packing import OWN_KEYS, isolated_reason, leaves, pack_key

KEYS = sorted(k for k in leaves(TrialConfig()) if k != "warm_start")


def pack_conflicts(a: TrialConfig, b: TrialConfig) -> list[str]:
    """The shared keys in which `a` and `b` differ (none: they may share a pack), or why either runs alone."""
    reasons = [r for r in (isolated_reason(a), isolated_reason(b)) if r]
    if reasons:
        return reasons
    left, right = leaves(a), leaves(b)
    return [k for k in left if k not in OWN_KEYS and left[k] != right.get(k)]


def _other(value):
    """A different value of the same kind (dataclasses.replace does not validate it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return [*value, "other"]
    return 3  # a None default: any set value differs


def _with(cfg, dotted: str, value):
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _with(getattr(cfg, head), rest, value)})


@pytest.mark.parametrize("key", KEYS)
def test_every_config_key_is_either_a_trials_own_or_shared_by_its_pack(key):
    base = TrialConfig()
    changed = _with(base, key, "full" if key == "training.method" else _other(leaves(base)[key]))
    assert leaves(changed)[key] != leaves(base)[key]
    expected = [] if key in OWN_KEYS else [key]
    if key in ("zero_shot", "lora.use_dora", "training.method"):
        expected = [isolated_reason(changed)]  # these make a trial run alone, whatever the other one is
    assert pack_conflicts(base, changed) == expected
    assert (pack_key(base) == pack_key(changed)) == (key in OWN_KEYS)


def test_the_own_keys_are_real_keys_and_the_isolated_trials_say_why():
    assert OWN_KEYS < set(KEYS)
    base = TrialConfig()
    assert isolated_reason(base) is None
    warm = dataclasses.replace(base, warm_start=WarmStart(checkpoint="/x/checkpoint-4", step=4))
    reasons = [isolated_reason(c) for c in (dataclasses.replace(base, zero_shot=True), _with(base, "lora.use_dora", True),
                                            _with(base, "training.method", "full"), warm)]
    assert all(reasons) and len(set(reasons)) == 4


@pytest.mark.parametrize("setting, ready, workers, limit, size", [
    (1, 8, 2, None, 1), (4, 8, 2, None, 4), (4, 3, 2, None, 3), ("auto", 8, 2, None, 4), ("auto", 3, 2, None, 2),
    ("auto", 40, 2, None, AUTO_TRIALS_PER_WORKER), ("auto", 8, 2, 2, 2), (4, 8, 1, 1, 1), ("auto", 1, 4, None, 1)])
def test_a_pack_holds_what_the_setting_the_ready_trials_the_workers_and_a_split_allow(setting, ready, workers, limit,
                                                                                      size):
    assert pack_size(setting, ready, workers, limit, on_gpus=True) == size
    # On CPU workers `auto` runs every trial alone (packs measured slower there); a number still packs.
    assert pack_size(setting, ready, workers, limit, on_gpus=False) == (1 if setting == "auto" else size)


@pytest.fixture
def raw(tiny_model_dir, local_data, tmp_path) -> dict:
    return tiny_spec(tiny_model_dir, *local_data, tmp_path)


def _finishing(config):
    return [ev.Metric("train/loss", 1, 2.0), Finish(SCORES)] if not config.zero_shot else [Finish(SCORES)]


def test_auto_on_gpus_packs_compatible_fine_tunes_and_runs_baselines_alone(raw):
    raw["search"]["grid"]["training.max_seq_length"] = [128, 96]  # two groups that cannot share a base
    raw["resources"] = {"trials_per_worker": "auto"}
    spec = parse_spec(raw)
    store, backend = Store(spec.output.store_url()), ScriptedBackend(_finishing, cpus=1, gpus=1)

    outcome = run_sweep(spec, store, backend, show_progress=False)

    names = {t.id: t.name for t in store.summary("tiny").trials}
    assert sorted(outcome.completed) == sorted(names.values())
    packed = [sorted(names[k] for k in pack) for pack in backend.packs]
    assert sorted(packed) == [["v1-max_seq_length128", "v2-max_seq_length128"],
                              ["v1-max_seq_length96", "v2-max_seq_length96"]]
    for pack in backend.packs:  # each pack is one base computation
        assert len({pack_key(c) for k, c in backend.submitted if k in pack}) == 1
    alone = [names[k] for k, c in backend.submitted if not any(k in p for p in backend.packs)]
    assert sorted(alone) == sorted(n for n in names.values() if n.endswith("zero-shot"))
    workers = {t.name: t.worker for t in store.summary("tiny").trials}
    assert all(workers[n] == workers[p[0]] and "pack" in workers[n] for p in packed for n in p)

    cpu_only = ScriptedBackend(_finishing, cpus=1)  # the same spec on CPU workers: every trial alone
    run_sweep(parse_spec({**raw, "name": "tiny-cpu"}), store, cpu_only, show_progress=False)
    assert cpu_only.packs == [] and len(cpu_only.submitted) == len(names)


def test_auto_on_a_gpu_packs_as_many_trials_as_its_free_memory_holds_with_headroom(raw, tiny_model_dir):
    """The same 6 compatible fine-tunes: a GPU whose free memory holds 3 of them (after the 20% headroom) gets
    packs of at most 3; one that holds fewer than 2 runs each alone; a large one packs up to AUTO's ceiling."""
    from orchestrator.driver.pack_sizing import AUTO_MEMORY_HEADROOM, memory_limit
    from orchestrator.search.strategies import expand
    from trainer.models import model_config
    from trainer.packing import pack_memory

    raw["search"] = {"grid": {"prompt": ["v1", "v2"], "lora.rank": [4, 8, 16]}, "baselines": False}
    raw["resources"] = {"trials_per_worker": "auto"}
    spec = parse_spec(raw)
    need = pack_memory(expand(spec)[-1].config, model_config(str(tiny_model_dir)))  # rank 16: the largest
    assert need.base_bytes > 0 and need.per_trial_bytes > 0
    holds_3 = int(need.total(3) / (1 - AUTO_MEMORY_HEADROOM)) + 1
    assert memory_limit(holds_3, need) == 3 and memory_limit(holds_3 - 2 * need.per_trial_bytes, need) == 1
    for name, free, largest in (("fits-3", holds_3, 3), ("fits-1", need.total(1), 1), ("roomy", 2**40, 6)):
        backend = ScriptedBackend(_finishing, cpus=1, gpus=1, gpu_free_bytes=free)
        outcome = run_sweep(parse_spec({**raw, "name": name}), Store(spec.output.store_url()), backend,
                            show_progress=False)
        assert len(outcome.completed) == 6
        sizes = [len(p) for p in backend.packs] or [1]
        assert max(sizes) == largest, (name, backend.packs)


def test_an_out_of_memory_pack_splits_in_halves_with_the_same_configs(raw):
    raw["search"] = {"grid": {"prompt": ["v1", "v2"], "lora.rank": [4, 8]}, "baselines": False}
    raw["resources"] = {"trials_per_worker": 4, "retry_out_of_memory": True}
    spec = parse_spec(raw)
    store, seen, tries = Store(spec.output.store_url()), Recorder(), []

    def script(config):
        tries.append(config)
        if len(tries) <= 4:  # the first pack of 4 runs out of memory
            return [ev.Metric("train/loss", 1, 2.0), Fail("CUDA out of memory", ev.FailureKind.OUT_OF_MEMORY)]
        return _finishing(config)

    backend = ScriptedBackend(script, cpus=1)
    outcome = run_sweep(spec, store, backend, show_progress=False, sinks=[seen])

    assert len(outcome.completed) == 4
    assert [len(p) for p in backend.packs] == [4, 2, 2]
    assert {c.training.micro_batch_size for _, c in backend.submitted} == {2}  # split, not shrunk
    for name in outcome.completed:
        assert seen.path(name) == ["submitted", "running", "pending", "submitted", "running", "completed"]
    reasons = [c.reason for c in seen.changes if c.new is S.PENDING]
    assert reasons == ["out of memory in a pack of 4: runs again in a pack of at most 2"] * 4


def test_a_trial_stopped_out_of_its_pack_ends_interrupted_and_its_mates_complete(raw):
    raw["search"] = {"grid": {"prompt": ["v1", "v2"], "lora.rank": [4, 8]}, "baselines": False}
    raw["resources"] = {"trials_per_worker": 4}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())

    class StopOne(Recorder):
        def on_transition(self, change):
            super().on_transition(change)
            if change.new is S.RUNNING and change.trial.name == "v1-r8":
                store.control.request_stop("tiny", "v1-r8")

    def script(config):
        if (config.prompt, config.lora.rank) == ("v1", 8):
            return [ev.Metric("train/loss", 1, 2.0), HANG]
        return [ev.Metric("train/loss", 1, 2.0), *[ev.Phase("train")] * 150, Finish(SCORES)]

    backend = ScriptedBackend(script, cpus=1)
    outcome = run_sweep(spec, store, backend, show_progress=False, sinks=[StopOne()])

    assert [len(p) for p in backend.packs] == [4]
    assert outcome.interrupted == ["v1-r8"] and len(outcome.completed) == 3
    assert {t.name: t.error for t in store.summary("tiny").trials}["v1-r8"] == "stopped by `sweep stop` for this trial"


def test_a_study_asks_for_a_pack_of_proposals_and_a_pruned_one_leaves_its_mate_running(raw):
    raw["search"] = {"type": "optuna", "baselines": False, "space": {"lora.rank": {"choices": [4, 8, 16, 32]}},
                     "optuna": {"sampler": "random", "n_trials": 4, "pruner": "median", "pruner_startup_trials": 1}}
    raw["training"].update(max_steps=4, eval_interval_steps=1)
    raw["prompt"] = "v1"
    raw["resources"] = {"trials_per_worker": 2}
    spec = parse_spec(raw)
    store, calls = Store(spec.output.store_url()), []

    def script(config):  # the first pack scores 0.9; in the second, one scores 0.1 at every interim eval
        calls.append(config)
        score = 0.1 if len(calls) == 3 else 0.9
        interim = [ev.Metric("eval/rougeL", step, score) for step in (1, 2, 3)]
        return [*interim, HANG] if score < 0.5 else [*interim, *[ev.Phase("train")] * 50, Finish({**SCORES, "rougeL": score})]

    backend = ScriptedBackend(script, cpus=1)
    outcome = run_sweep(spec, store, backend, show_progress=False)

    assert [len(p) for p in backend.packs] == [2, 2]  # two proposals asked at once, packed
    assert len(outcome.pruned) == 1 and len(outcome.completed) == 3
    pruned = {t.name: t for t in store.summary("tiny").trials}[outcome.pruned[0]]
    assert pruned.id == backend.packs[1][0] and pruned.error.startswith("pruned by the median pruner at step 1")
    import optuna

    study = optuna.load_study(study_name="tiny", storage=store.url)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
