"""Spec validation: every problem at once, with key path, given value, allowed values and a fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.planning.loading import find_spec, load_spec, parse_spec
from sweeps.spec import SpecError
from tests.conftest import tiny_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec(tiny_model_dir, local_data, tmp_path) -> dict:
    return tiny_spec(tiny_model_dir, *local_data, tmp_path)


def problems_of(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return {p.path: p.render() for p in info.value.problems}


def test_valid_spec_parses_yaml_1_1_exponent_as_float(spec):
    parsed = parse_spec(yaml.safe_load(yaml.safe_dump(spec)))
    assert parsed.training.learning_rate == pytest.approx(1e-2)
    assert isinstance(parsed.training.learning_rate, float)


def test_pyyaml_really_reads_bare_exponent_as_string():
    # The reason the loader converts: YAML 1.1 needs a dot for a float.
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"


def test_every_problem_is_reported_at_once(spec):
    spec["lora"] = {"rank": -4, "dropot": 0.1}
    spec["training"]["learning_rate"] = 0
    spec["training"]["max_stesp"] = 3
    spec["prompts"]["v3"] = "Summarize {text}"
    found = problems_of(spec)
    assert set(found) == {"lora.rank", "lora.dropot", "training.learning_rate", "training.max_stesp", "prompts.v3"}
    assert "did you mean 'dropout'?" in found["lora.dropot"]
    assert "did you mean 'max_steps'?" in found["training.max_stesp"]
    assert "given -4" in found["lora.rank"] and ">= 1" in found["lora.rank"]
    assert "> 0.0" in found["training.learning_rate"]
    assert "{dialogue}" in found["prompts.v3"] and "['text']" in found["prompts.v3"]


def test_prompt_without_dialogue_and_bad_grid(spec):
    spec["prompts"]["v2"] = "Summarize this."
    spec["search"]["grid"] = {"prompt": ["v1", "v9"], "lora.rnak": [8], "lora.rank": [8, 2.5]}
    found = problems_of(spec)
    assert "add {dialogue}" in found["prompts.v2"]
    assert "search.grid.prompt[1]" in found and "v1, v2" in found["search.grid.prompt[1]"]
    assert "did you mean 'lora.rank'?" in found["search.grid.lora.rnak"]
    assert "must be an integer" in found["search.grid.lora.rank[1]"]


def test_missing_files_columns_and_model(spec, tmp_path):
    spec["model"]["name"] = str(tmp_path / "no-such-model")
    spec["dataset"]["eval_file"] = str(tmp_path / "missing.jsonl")
    spec["dataset"]["dialogue_column"] = "text"
    found = problems_of(spec)
    assert "no model directory" in found["model.name"]
    assert "missing.jsonl" in found["dataset.eval_file"]
    assert "'text'" in found["dataset (train: train.jsonl)"] and "dialogue" in found["dataset (train: train.jsonl)"]


def test_explicit_mirror_must_hold_the_splits(spec, tmp_path):
    spec["dataset"] = {"name": "dialogsum", "mirror_dir": str(tmp_path / "empty")}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    rendered = [p.render() for p in info.value.problems if p.path == "dataset.mirror_dir"]
    assert len(rendered) == 2
    assert "dialogsum/validation.jsonl" in rendered[0] and "dialogsum/test.jsonl" in rendered[1]


def test_cross_field_checks(spec):
    spec["training"]["warmup_steps"] = 5
    spec["generation"]["max_new_tokens"] = 200
    found = problems_of(spec)
    assert "warm-up must end before training does" in found["training.warmup_steps"]
    assert "< 128" in found["generation.max_new_tokens"]


def test_cli_exits_2_and_writes_nothing(spec, tmp_path, capsys):
    spec["lora"]["rank"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store.db"
    assert main(["run", str(path), "--store", f"sqlite:///{store}"]) == 2
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lora.rank: must be >= 1; given 0" in err and "nothing was run or written" in err
    assert not store.exists()


def test_bare_spec_name_is_found_in_sweeps_dir(monkeypatch):
    monkeypatch.chdir(REPO)
    assert find_spec("grid_2x2x2.yaml") == Path("sweeps/grid_2x2x2.yaml")
    assert find_spec("smoke") == Path("sweeps/smoke.yaml")
    with pytest.raises(SpecError, match="grid_2x2x2.yaml"):
        find_spec("grid_9x9.yaml")


KOREAN_ROWS = [("#Person1#: 내일 회의가 몇 시예요?\n#Person2#: 오전 열 시로 바뀌었어요.", "#Person2#는 회의가 오전 열 시로 바뀌었다고 알려준다."),
               ("#Person1#: 우유 좀 사다 줄래요?\n#Person2#: 네, 빵도 살까요?", "#Person1#는 #Person2#에게 우유를 부탁한다.")]
KOREAN_DEV_ROWS = [("#Person1#: 점심 뭐 먹을까요?\n#Person2#: 김치찌개 어때요?", "#Person2#는 점심으로 김치찌개를 제안한다."),
                   ("#Person1#: 주말에 등산 갈래요?\n#Person2#: 좋아요, 토요일에 가요.", "두 사람은 토요일에 등산을 가기로 한다.")]


def korean_files(folder: Path) -> list[str]:
    """--set options pointing the Korean spec at two small CSV files in the competition's layout."""
    import csv

    for name, rows in (("train.csv", KOREAN_ROWS), ("dev.csv", KOREAN_DEV_ROWS)):
        with (folder / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["fname", "dialogue", "summary"])
            writer.writerows([f"{name}_{i}", d, s] for i, (d, s) in enumerate(rows))
    return ["--set", f"dataset.train_file={folder / 'train.csv'}", "--set", f"dataset.eval_file={folder / 'dev.csv'}"]


def test_shipped_specs_are_valid_and_plan(monkeypatch, data_root, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("QLORA_SWEEP_DATA_DIR", str(data_root))
    shipped = sorted(p.name for p in (REPO / "sweeps").glob("*.yaml"))
    assert len(shipped) >= 8  # the three of the seed project and one per experiment it replaces
    for name in shipped:  # the Korean spec reads the user's own files: small stand-ins here
        sets = korean_files(tmp_path) if name == "korean_llm_vs_kobart.yaml" else []
        assert load_spec(name, sets[1::2]).name == name.removesuffix(".yaml")
        assert main(["validate", name, *sets]) == 0 and main(["plan", name, *sets]) == 0, capsys.readouterr().err
    planned = capsys.readouterr().out
    assert "methodfull-lr5e-5" in planned and "v2-r16-lr2e-4" in planned and "lr1e-4" in planned
    assert "kobart-base-v2-v2-lr2e-4" in planned and "v1-SOLAR-10.7B-Instruct-v1.0-zero-shot" in planned


def test_every_shipped_yaml_key_has_a_comment():
    for path in (REPO / "sweeps").glob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                assert " # " in line or line.rstrip().endswith(":") and _is_section(line), f"{path.name}:{number}"


def _is_section(line: str) -> bool:
    return not line.startswith(" ") or line.strip() in ("grid:", "space:", "optuna:")


def test_unreachable_dataset_exits_2_before_ray_and_store(spec, tmp_path, monkeypatch, capsys):
    # samsum has no local mirror here and the hub is offline: the sweep must not start.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    monkeypatch.delenv("QLORA_SWEEP_DATA_DIR", raising=False)
    spec["dataset"] = {"name": "samsum", "train_examples": 4, "eval_examples": 2}
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store.db"
    # In a fresh process, as a user runs it: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--store", f"sqlite:///{store}"],
                         cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    err = run.stderr
    assert "dataset could not be loaded from hub knkarthick/samsum split validation" in err
    assert "QLORA_SWEEP_DATA_DIR" in err and "nothing was run or written" in err
    assert not store.exists()


def test_optuna_search_problems_are_all_reported(spec):
    spec["search"] = {"type": "optuna", "grid": {"prompt": ["v1"]},
                      "space": {"prompt": {"choices": ["v1", "v9"]},
                                "lora.rank": {"choices": [8], "low": 4, "high": 16},
                                "training.learning_rate": {"low": 0, "high": "1e-3", "log": True},
                                "lora.rnak": {"choices": [8]}},
                      "optuna": {"objectives": [{"metric": "rougeL"}, {"metric": "rogue2", "direction": "minimize"}],
                                 "pruner": "median"}}
    found = problems_of(spec)
    assert set(found) == {"search.grid", "search.space.prompt.choices[1]", "search.space.lora.rank",
                          "search.space.training.learning_rate.low", "search.space.lora.rnak",
                          "search.optuna.objectives[1].metric", "search.optuna.pruner", "training.eval_interval_steps"}
    assert "search.space" in found["search.grid"] and "move the keys" in found["search.grid"]
    assert "either `choices` or a range" in found["search.space.lora.rank"]
    assert "a log range must be positive" in found["search.space.training.learning_rate.low"]
    assert "did you mean 'lora.rank'?" in found["search.space.lora.rnak"]
    assert "did you mean 'rouge2'?" in found["search.optuna.objectives[1].metric"]
    assert "single-objective" in found["search.optuna.pruner"]
    assert "given 0" in found["training.eval_interval_steps"] and "1 to 1" in found["training.eval_interval_steps"]


def test_optuna_ranges_are_typed_and_grid_sampler_needs_choices(spec):
    spec["search"] = {"type": "optuna", "space": {"lora.rank": {"low": 4, "high": 16.5},
                                                  "training.learning_rate": {"low": "1e-4", "high": "1e-3"}},
                      "optuna": {"sampler": "grid"}}
    spec["prompt"] = "v1"
    found = problems_of(spec)
    assert "must be an integer" in found["search.space.lora.rank.high"]
    assert "grid sampler needs `choices`" in found["search.space.training.learning_rate"]
    spec["search"]["optuna"]["sampler"] = "tpe"
    spec["search"]["space"]["lora.rank"]["high"] = 16
    parsed = parse_spec(spec)
    assert parsed.search.space["training.learning_rate"].low == pytest.approx(1e-4)  # YAML 1.1 text -> number


def test_shipped_optuna_spec_is_valid_and_plans_its_baselines():
    spec = load_spec(str(REPO / "sweeps" / "optuna_tpe.yaml"))
    from orchestrator.search.strategies import expand
    from orchestrator.search.study import distributions

    assert [t.name for t in expand(spec)] == ["v1-zero-shot", "v2-zero-shot"]
    space = distributions(spec.search.space)
    assert space["training.learning_rate"].log and space["lora.rank"].choices == (8, 16)


def test_every_grid_point_is_checked_and_one_bad_point_exits_2_writing_nothing(spec, tmp_path, capsys):
    spec["generation"]["max_new_tokens"] = 96
    spec["search"]["grid"] = {"prompt": ["v1", "v2"], "training.max_seq_length": [512, 64]}
    found = problems_of(spec)  # the base (128) and the 512 points are fine; the 64 ones are not
    at = "generation.max_new_tokens (at v1-max_seq_length64, v2-max_seq_length64, v1-max_seq_length64-zero-shot, " \
         "v2-max_seq_length64-zero-shot)"
    assert list(found) == [at] and "given 96; allowed: < 64" in found[at]
    path = tmp_path / "points.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "nothing was run or written" in capsys.readouterr().err
    assert not (tmp_path / "store.db").exists() and not (tmp_path / "runs").exists()


def test_a_prompt_too_long_for_its_token_budget_exits_2_before_anything_runs(spec, tmp_path, capsys):
    # The real tokenizer and chat template: ~30 tokens of template + 8 new tokens leave no room in 48.
    spec["search"]["grid"] = {"prompt": ["v1", "v2"], "training.max_seq_length": [128, 48]}
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "training.max_seq_length (prompt 'v1', at v1-max_seq_length48, v1-max_seq_length48-zero-shot)" in err
    assert "must leave at least 16 tokens of dialogue; given 48; allowed: >= " in err
    assert "max_seq_length128" not in err and not (tmp_path / "store.db").exists()


@pytest.mark.parametrize("values", [[8, 8], ["2e-4", 0.0002]])
def test_equal_grid_values_are_refused_naming_both(spec, values):
    key = "lora.rank" if values[0] == 8 else "training.learning_rate"
    spec["search"]["grid"] = {key: values}
    found = problems_of(spec)
    assert f"search.grid.{key}[1]" in found and "(item 0)" in found[f"search.grid.{key}[1]"]
    assert "values of one axis must differ" in found[f"search.grid.{key}[1]"]


def test_path_like_prompt_names_are_refused(spec):
    spec["prompts"]["../../../tmp/escaped"] = "Sum up:\n{dialogue}"
    spec["search"]["grid"] = {"prompt": ["v1", "../../../tmp/escaped"]}
    found = problems_of(spec)
    assert "a prompt name becomes part of trial folder names" in found["prompts.../../../tmp/escaped"]
    assert "e.g. tmp_escaped" in found["prompts.../../../tmp/escaped"]


def test_settings_that_would_be_ignored_are_reported(spec):
    spec["training"].update(interim_eval_examples=2, eval_interval_steps=0, logging_steps=3)
    found = problems_of(spec)
    assert "it would be ignored" in found["training.interim_eval_examples"]
    assert "at least one training loss point must be logged" in found["training.logging_steps"]  # max_steps is 2


def test_read_commands_take_a_spec_path_and_read_its_store(spec, tmp_path, capsys, monkeypatch):
    from results.store import Store

    spec["output"] = {"run_dir": "elsewhere/runs", "store": f"sqlite:///{tmp_path / 'custom' / 'r.db'}"}
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = Store(spec["output"]["store"])
    sweep_id = store.lease.open_sweep("tiny", {"training": {"max_steps": 2}}, str(tmp_path / "elsewhere" / "runs" / "tiny"), {})
    store.records.register_trial(sweep_id, "v1", "trial", {"prompt": "v1"}, {}, "k")
    monkeypatch.chdir(tmp_path / "custom")  # anywhere: the store is the spec's, not ./runs/results.db
    assert main(["status", str(path), "--format", "json"]) == 0
    import json

    [trial] = json.loads(capsys.readouterr().out)["trials"]
    assert trial == {"name": "v1", "kind": "trial", "state": "pending (orphaned)", "step": 0, "max_steps": 2,
                     "tries": 0, "resumed_from_step": None, "worker": None, "note": None}
    assert main(["stop", str(path)]) == 0 and "1 unfinished trial(s) marked interrupted" in capsys.readouterr().out


def test_set_overrides_any_dotted_key_and_is_validated_like_the_file(spec, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["plan", str(path), "--set", "search.grid.lora.rank=[4, 8]", "--set", "training.learning_rate=1e-3"]) == 0
    planned = capsys.readouterr().out
    assert "v1-r4  " in planned and "v2-r8  " in planned and "training.learning_rate=0.001" in planned
    assert main(["validate", str(path), "--set", "lora.rank=0", "--set", "oops", "--set", "model.name.x=1"]) == 2
    err = capsys.readouterr().err
    assert "--set: an override is dotted.key=value; given 'oops'" in err
    assert "--set model.name.x: model.name is a value, not a section" in err
    assert main(["validate", str(path), "--set", "lora.rank=0", "--set", "lora.rnak=4"]) == 2
    err = capsys.readouterr().err
    assert "--set lora.rank=0 --set lora.rnak=4: 2 problem(s)" in err  # the source names the overrides
    assert "lora.rank: must be >= 1; given 0" in err and "lora.rnak: unknown key" in err and "did you mean 'rank'" in err


def test_a_model_whose_tokenizer_cannot_load_exits_2_before_anything_runs(spec, tmp_path, tiny_model_dir, capsys):
    import shutil

    broken = tmp_path / "no-tokenizer"  # as a hub id offline or a half-copied folder: weights, no tokenizer
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, broken / name)
    spec["model"]["name"] = str(broken)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0  # a config.json is all validation can check...
    assert main(["run", str(path), "--quiet"]) == 2  # ...and the run stops before Ray, the store or a trial
    err = capsys.readouterr().err
    assert "the prompts' token budgets could not be checked, because a tokenizer did not load" in err
    assert "nothing was run or written" in err and not (tmp_path / "store.db").exists()


def test_an_epoch_budget_replaces_max_steps_and_is_checked_on_the_data(spec, tmp_path, capsys):
    from orchestrator.search.strategies import expand

    spec["training"].update(epochs=2, warmup_steps=1, warmup_ratio=0.1)
    found = problems_of(spec)
    assert "training.epochs: the budget is max_steps or epochs, not both; given {'max_steps': 2, 'epochs': 2.0}" \
        in found["training.epochs"]
    assert "warm-up is warmup_steps or warmup_ratio, not both" in found["training.warmup_ratio"]
    for key in ("epochs", "warmup_ratio"):
        del spec["training"][key]
    spec["search"]["grid"] = {"prompt": ["v1"], "training.epochs": [1, 2.5]}  # each point drops the spec's max_steps
    budgets = [(t.config.training.max_steps, t.config.training.epochs) for t in expand(parse_spec(spec))
               if t.kind == "trial"]
    assert budgets == [(None, 1.0), (None, 2.5)]
    spec["search"]["grid"] = {"prompt": ["v1"]}
    path = tmp_path / "epochs.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_spec(str(path), ["training.epochs=3"]).training.max_steps is None  # --set one clears the other
    # 8 rows at micro batch 2: one epoch is 4 steps, so a 4-step warm-up never ends. Known once the data is read.
    assert main(["run", str(path), "--quiet", "--set", "training.epochs=1", "--set", "training.warmup_steps=4"]) == 2
    err = capsys.readouterr().err
    assert "training.warmup_steps (at v1: 8 training rows at most): warm-up must end before training does " \
           "(4 steps); given 4; allowed: 0 to 3" in err
    assert not (tmp_path / "store.db").exists() and not (tmp_path / "runs").exists()


def test_paged_optimizers_are_refused_for_trials_without_a_gpu(spec):
    from orchestrator.driver.placement import Unschedulable, check_placement

    spec["resources"] = {"gpus_per_trial": 0}
    spec["search"]["grid"]["training.optimizer"] = ["adamw_8bit", "paged_adamw_8bit"]
    found = problems_of(spec)
    assert list(found) == ["search.grid.training.optimizer[1]"]
    assert "pages its state out of GPU memory, and resources.gpus_per_trial: 0 gives trials no GPU; given " \
           "'paged_adamw_8bit'; allowed: adamw, adamw_8bit" in found["search.grid.training.optimizer[1]"]
    study = dict(spec, search={"type": "optuna", "space": {"training.optimizer": {"choices": ["adamw", "paged_adamw_32bit"]}},
                               "optuna": {"n_trials": 2}})  # a study's choices are checked the same way
    assert "search.space.training.optimizer.choices[1]" in problems_of(study)

    class CpuOnlyCluster:  # what RayBackend reports for a cluster of two-CPU nodes
        @staticmethod
        def total(resource):
            return 2.0 if resource == "CPU" else 0.0

        largest_node = total

    spec["resources"] = {"gpus_per_trial": 1}
    with pytest.raises(Unschedulable, match="this Ray cluster has no GPU; given 'paged_adamw_32bit'; allowed: adamw"):
        check_placement(parse_spec(spec).resources, CpuOnlyCluster(), {"adamw", "paged_adamw_32bit"})
    check_placement(parse_spec(spec).resources, CpuOnlyCluster(), {"adamw", "adamw_8bit"})


def test_a_key_given_twice_at_any_depth_is_refused_with_both_lines(tmp_path, capsys):
    from orchestrator.cli import main

    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\nname: again\ntraining:\n  max_steps: 4\n  learning_rate: 1e-3\n  max_steps: 8\n"
                    "prompts:\n  v1: \"Summarize: {dialog}\"\n  v2: \"{dialogue} in {lang}\"\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "name: a key is given once in its section (YAML would keep the last one silently); given 'lines 1 and 2'" \
        in err
    assert "training.max_steps: a key is given once in its section" in err and "lines 4 and 6" in err
    assert "delete the line you do not mean (line 4 or 6)" in err
    # Told with the spec's other problems, at once: the placeholder typo and its fix.
    assert "prompts.v1: a template must contain {dialogue}" in err
    assert "Fix: replace ['dialog'] with {dialogue}: 'Summarize: {dialogue}'" in err
    assert "Fix: write {{lang}} for literal braces, or remove {lang}" in err
    assert "Traceback" not in err


def test_every_fix_is_an_action(spec):
    """Each problem ends with a `Fix:` the user can act on: the bad cases below once had none."""
    spec["prompts"]["v3"] = "Summarize {dialogue"
    spec["lora"] = "rank 8"
    spec["search"] = {"type": "optuna", "space": {
        "training.learning_rate": {"low": 1e-2, "high": 1e-3, "log": True, "step": 1e-4},
        "training.warmup_steps": {"low": -1.0, "high": 4.0, "log": True},
        "lora.dropout": {"choices": []}, "training.max_steps": {"choices": [2], "low": 1, "high": 4}},
        "optuna": {"objectives": []}}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    found = {p.path: p for p in info.value.problems}
    assert {"prompts.v3", "lora", "search.space.training.learning_rate", "search.space.training.warmup_steps.low",
            "search.space.training.learning_rate.step", "search.space.lora.dropout.choices",
            "search.space.training.max_steps", "search.optuna.objectives"} <= set(found), sorted(found)
    assert all(p.fix for p in found.values()), [p.render() for p in found.values() if not p.fix]
    assert found["search.space.training.learning_rate"].fix == "swap them: low: 0.001, high: 0.01"
    assert "close the brace" in found["prompts.v3"].fix and "indented `key: value`" in found["lora"].fix
