"""Loading a spec: find the file, apply `--set` overrides, build the typed spec and check it as a whole."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from sweeps import schema
from orchestrator.planning.checks import semantic_problems
from orchestrator.search.strategies import point_problems
from sweeps.spec import OutputConfig, SpecError, SweepSpec
from trainer.config import ConfigProblem, cleared_by

SPEC_DIR = Path("sweeps")


def find_spec(name: str) -> Path:
    """The spec file `name`, else `sweeps/<name>` (with or without .yaml), as a user would type it."""
    for candidate in (Path(name), SPEC_DIR / name, SPEC_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise SpecError(name, [ConfigProblem("<spec file>", "the spec file must exist", name,
                                         ", ".join(sorted(p.name for p in SPEC_DIR.glob("*.yaml"))) or "a YAML file",
                                         "give a path, or a file name inside sweeps/")])


def load_spec(name: str, overrides: list[str] = ()) -> SweepSpec:
    """The spec file `name`, with `--set key=value` overrides applied before it is validated as a whole."""
    path = find_spec(name)
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        problems: list[ConfigProblem] = duplicate_keys(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [ConfigProblem("<yaml>", "the file must be valid YAML", str(exc).splitlines()[0],
                                                  "YAML 1.1", str(exc).replace("\n", " "))]) from None
    raw = apply_overrides(raw if isinstance(raw, dict) else {}, overrides, problems)
    label = str(path) + "".join(f" --set {o}" for o in overrides)
    if problems:  # with the spec's own problems, so that every one is told at once
        try:
            parse_spec(raw, label)
        except SpecError as exc:
            problems += exc.problems
        raise SpecError(str(path), problems)
    return parse_spec(raw, label)


def duplicate_keys(text: str) -> list[ConfigProblem]:
    """Every key given twice in one mapping of the YAML `text`, at any depth, with both line numbers (YAML itself
    keeps the last one silently)."""
    problems: list[ConfigProblem] = []

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                dotted = f"{path}.{key}" if path else key
                if key in seen and key != "<<":
                    problems.append(ConfigProblem(
                        dotted, "a key is given once in its section (YAML would keep the last one silently)",
                        f"lines {seen[key]} and {line}", "one of them",
                        f"delete the line you do not mean (line {seen[key]} or {line})"))
                seen.setdefault(key, line)
                walk(value_node, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{path}[{index}]")

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return problems


# Mappings whose keys are themselves dotted trial keys (`search.grid.lora.rank`).
_DOTTED_KEY_MAPS = (("search", "grid"), ("search", "space"))


def apply_overrides(raw: dict, overrides: list[str], problems: list[ConfigProblem]) -> dict:
    """A copy of `raw` with each `dotted.key=value` set; the value is read as YAML (`8`, `2e-4`, `[4, 8]`,
    `null`). Unknown keys are reported by the validation that follows, as for the file."""
    out = copy.deepcopy(raw)
    for override in overrides:
        parsed = parse_override(override, problems)
        if parsed is None:
            continue
        key, value = parsed
        _set_path(out, key.split("."), value, key, problems)
        cleared = cleared_by(key, value)  # --set training.epochs=3 replaces the file's max_steps
        if cleared is not None:
            section, name = cleared[0].split(".")
            if isinstance(out.get(section), dict):
                out[section].pop(name, None)
    return out


def parse_override(override: str, problems: list[ConfigProblem]) -> tuple[str, Any] | None:
    """(dotted key, value read as YAML) of one `key=value`; None after appending the problem."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        problems.append(ConfigProblem("--set", "an override is dotted.key=value", override, "dotted.key=value",
                                      "e.g. --set model.name=./tiny-llama or --set lora.rank=16"))
        return None
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(ConfigProblem(f"--set {key}", "the value must be valid YAML", text, "YAML 1.1", str(exc)))
        return None


def _set_path(node: dict, parts: list[str], value: Any, key: str, problems: list[ConfigProblem]) -> None:
    walked: tuple[str, ...] = ()
    while len(parts) > 1 and walked not in _DOTTED_KEY_MAPS:
        head = parts.pop(0)
        walked += (head,)
        child = node.setdefault(head, {})
        if child is None:
            child = node[head] = {}
        if not isinstance(child, dict):
            problems.append(ConfigProblem(f"--set {key}", f"{'.'.join(walked)} is a value, not a section", child,
                                          "a key path that ends at a setting", f"--set {'.'.join(walked)}=<value>"))
            return
        node = child
    node[".".join(parts)] = value


def spec_target(name: str) -> tuple[str, OutputConfig]:
    """(sweep name, output section) a spec file names, for the read commands: only `name` and `output` are read
    (and must be valid), so results stay readable when, say, the spec's data has moved since it ran."""
    path = find_spec(name)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    problems: list[ConfigProblem] = []
    raw = raw if isinstance(raw, dict) else {}
    output = schema.build(OutputConfig, raw.get("output"), "output", problems)
    sweep = schema.convert(str, raw.get("name", ""), "name", problems)
    if problems:
        raise SpecError(str(path), problems)
    return sweep, output


def parse_spec(raw: Any, source: str = "<spec>") -> SweepSpec:
    problems: list[ConfigProblem] = []
    spec = schema.build(SweepSpec, raw, "", problems)
    # Badly typed fields were replaced by their defaults, so the deeper checks still run; a path
    # already reported is not reported twice.
    reported = {p.path for p in problems}
    problems += [p for p in semantic_problems(spec) if p.path not in reported]
    if not any(p.path.startswith(("search", "prompt")) for p in problems):  # the runs can be planned
        problems += [p for p in point_problems(spec) if p.path not in reported]
    if problems:
        raise SpecError(source, problems)
    return spec


