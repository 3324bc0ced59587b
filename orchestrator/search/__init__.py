"""What runs next: a grid, or an Optuna study (orchestrator.search.strategies, orchestrator.search.study)."""

from orchestrator.search.strategies import Search, StudySearch, expand, point_problems, search_for

__all__ = ["Search", "StudySearch", "expand", "point_problems", "search_for"]


def __getattr__(name: str):
    """Anything else that `orchestrator.search` held when it was one module."""
    from orchestrator.search import strategies

    try:
        return getattr(strategies, name)
    except AttributeError:
        raise AttributeError(f"module 'orchestrator.search' has no attribute {name!r}") from None
