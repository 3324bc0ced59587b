"""Where trials ran, as every view prints it: device, resolved compute dtype, versions, peak memory.

A sweep whose trials ran on different devices or in different dtypes is said so in one place
(`sweep_lines`), because their runtimes, and across dtypes their scores, do not compare as equals.
"""

from __future__ import annotations

from results.store import TrialSummary


def describe(environment: dict | None) -> str:
    """One line of one trial's environment."""
    if not environment:
        return "not recorded"
    parts = [environment.get("device", "?"), _dtype(environment)]
    memory = [f"{k.removesuffix('_mib').replace('_', ' ')} {v:.0f} MiB" for k, v in environment.items()
              if k.endswith("_mib")]
    versions = ", ".join(f"{k} {v}" for k, v in (environment.get("versions") or {}).items())
    return "; ".join(parts + ([", ".join(memory)] if memory else []) + ([versions] if versions else []))


def setup_key(environment: dict) -> str:
    """What makes two trials' runs comparable: the device and the dtype they computed in."""
    return f"{environment.get('device', '?')}, {_dtype(environment)}"


def sweep_lines(trials: list[TrialSummary]) -> list[str]:
    """The sweep's hardware in one line, or a warning naming each distinct device/dtype and its trials."""
    groups: dict[str, list[str]] = {}
    for t in trials:
        if t.environment:
            groups.setdefault(setup_key(t.environment), []).append(t.name)
    if not groups:  # stored before trials recorded it
        return []
    lines = [f"hardware: {key}" for key in groups] if len(groups) == 1 else (
        [f"WARNING: trials ran on {len(groups)} different devices or compute dtypes; runtimes (and, across "
         "dtypes, scores) are not like for like:"] + [f"  {key}: {', '.join(names)}" for key, names in groups.items()])
    return lines + [f"note: {n}" for n in dtype_notes(trials)]


def dtype_notes(trials: list[TrialSummary]) -> list[str]:
    """Each distinct warning of an explicit dtype emulated on its CPU, once."""
    notes = [t.environment.get("dtype_note") for t in trials if t.environment]
    return list(dict.fromkeys(n for n in notes if n))


def _dtype(environment: dict) -> str:
    dtype, requested = environment.get("compute_dtype", "?"), environment.get("requested_dtype")
    return f"{dtype} (auto)" if requested == "auto" else f"{dtype} (explicit)"
