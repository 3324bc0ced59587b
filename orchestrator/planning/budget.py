"""Token budgets checked with each model's real tokenizer, before a run is started.

A prompt with its chat template, plus the summary budget (`max_new_tokens`), must leave room for the dialogue
inside `training.max_seq_length`; otherwise every eval prompt is cut to an empty dialogue and the run scores
nothing. The tokenizer is loaded once per model and the prompt measured once per model and prompt setting.
"""

from __future__ import annotations

from functools import lru_cache

from trainer import prompts
from trainer.config import ConfigProblem, ModelConfig, TrialConfig
from trainer.models import load_tokenizer, resolve_model_path

# Fewer dialogue tokens than this cannot be summarized: a greeting at most.
MIN_DIALOGUE_TOKENS = 16


def budget_problems(configs: list[TrialConfig], names: list[str]) -> list[ConfigProblem]:
    """One problem per (model, prompt, max_new_tokens, max_seq_length) whose prompt leaves too little room."""
    found: dict[tuple, tuple[ConfigProblem, list[str]]] = {}
    for cfg, name in zip(configs, names):
        overhead = prompt_tokens(cfg.model.name, cfg.model.use_chat_template, cfg.model.system_prompt,
                                 cfg.prompt_template)
        t, g = cfg.training, cfg.generation
        room = t.max_seq_length - g.max_new_tokens - overhead
        if room >= MIN_DIALOGUE_TOKENS:
            continue
        key = (cfg.model.name, cfg.prompt, g.max_new_tokens, t.max_seq_length)
        problem = ConfigProblem(
            "training.max_seq_length", f"the prompt ({overhead} tokens with {cfg.model.name}'s template) plus "
            f"generation.max_new_tokens ({g.max_new_tokens}) must leave at least {MIN_DIALOGUE_TOKENS} tokens "
            f"of dialogue", t.max_seq_length, f">= {overhead + g.max_new_tokens + MIN_DIALOGUE_TOKENS}",
            "raise max_seq_length, lower max_new_tokens, or shorten the prompt")
        found.setdefault(key, (problem, []))[1].append(name)
    return [ConfigProblem(f"{p.path} (prompt {key[1]!r}, at {', '.join(runs)})", p.invariant, p.given, p.allowed,
                          p.fix) for key, (p, runs) in found.items()]


@lru_cache(maxsize=256)
def prompt_tokens(model: str, use_chat_template: bool, system_prompt: str | None, template: str) -> int:
    """Tokens of the prompt around an empty dialogue, as the trial builds it (chat template included)."""
    cfg = TrialConfig(model=ModelConfig(model, use_chat_template, system_prompt), prompt_template=template)
    tokenizer = _tokenizer(model)
    text = prompts.prompt_text(cfg, tokenizer, "")
    return len(tokenizer(text, add_special_tokens=not prompts.uses_chat(cfg, tokenizer))["input_ids"])


@lru_cache(maxsize=16)
def _tokenizer(model: str):
    return load_tokenizer(resolve_model_path(model))
