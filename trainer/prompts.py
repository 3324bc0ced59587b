"""Prompt templates: which placeholders they use, and how a dialogue is fitted into a token budget."""

from __future__ import annotations

import string

from trainer.config import PROMPT_PLACEHOLDER, TrialConfig


def placeholders(template: str) -> set[str]:
    """Names of the `{...}` fields in a template; raises ValueError on an unbalanced brace."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def render(template: str, dialogue: str) -> str:
    return template.format(**{PROMPT_PLACEHOLDER: dialogue})


def messages(cfg: TrialConfig, dialogue: str) -> list[dict]:
    system = [{"role": "system", "content": cfg.model.system_prompt}] if cfg.model.system_prompt else []
    return system + [{"role": "user", "content": render(cfg.prompt_template, dialogue)}]


def uses_chat(cfg: TrialConfig, tokenizer) -> bool:
    return cfg.model.use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def prompt_text(cfg: TrialConfig, tokenizer, dialogue: str) -> str:
    """The exact text the model sees before it starts the summary."""
    if uses_chat(cfg, tokenizer):
        return tokenizer.apply_chat_template(messages(cfg, dialogue), tokenize=False,
                                             add_generation_prompt=True)
    return render(cfg.prompt_template, dialogue) + "\nSummary:"


def fit_dialogue(cfg: TrialConfig, tokenizer, dialogue: str, budget_tokens: int) -> str | None:
    """The dialogue, cut at the end so that the whole prompt takes at most `budget_tokens`.

    Returns None when not even an empty dialogue fits (the prompt alone is too long).
    """
    overhead = _count(tokenizer, prompt_text(cfg, tokenizer, ""))
    room = budget_tokens - overhead
    if room <= 0:
        return None
    ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    return dialogue if len(ids) <= room else tokenizer.decode(ids[:room])


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
