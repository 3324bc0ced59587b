"""A trial as a folder that reproduces the leaderboard: its adapter or merged model (bundle), the model card
(model_card), and how faithfully the merged model reproduces the stored predictions (verification)."""

from orchestrator.export.bundle import EVAL_EXAMPLES, ExportError, export, trial_config

__all__ = ["EVAL_EXAMPLES", "ExportError", "export", "trial_config"]


def __getattr__(name: str):
    """Anything else that `orchestrator.export` held when it was one module."""
    from orchestrator.export import bundle

    try:
        return getattr(bundle, name)
    except AttributeError:
        raise AttributeError(f"module 'orchestrator.export' has no attribute {name!r}") from None
