"""Which knob mattered: parallel coordinates and hyperparameter importance, by Optuna.

A study is read as Optuna stored it. For a grid, an in-memory study is built from the store's completed
fine-tunes (their swept settings and the ranking metric), so Optuna's own plots and importance evaluator
read a grid exactly as they read a study.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from results.charts import to_svg
from evaluation.metrics import metric as registered
from results.store import SweepSummary
from results.stored_spec import stored_spec

EVALUATOR = "fANOVA (Optuna's FanovaImportanceEvaluator: a random forest of 64 trees, seed 0)"


def study_for(summary: SweepSummary, metric: str, storage_url: str | None) -> tuple[optuna.Study, str]:
    """(the study, what its values are): the stored study of an Optuna sweep (values: its first objective), else
    one built from the grid's completed fine-tunes (values: `metric`)."""
    settings = stored_spec(summary).search.study
    if settings is not None and storage_url:
        name, url = settings.target(summary.name, storage_url)
        try:
            study = optuna.load_study(study_name=name, storage=url)
            return study, settings.objectives[0].metric
        except KeyError:  # no study stored (yet): read the store like a grid
            pass
    return grid_study(summary, metric), metric


def grid_study(summary: SweepSummary, metric: str) -> optuna.Study:
    """An in-memory study with one COMPLETE trial per completed fine-tune: params = its swept settings."""
    done = [t for t in summary.trials if t.kind == "trial" and t.status == "completed" and metric in t.metrics]
    keys = sorted({k for t in done for k in t.params})
    distributions = {k: _distribution([t.params[k] for t in done if k in t.params]) for k in keys}
    direction = registered(metric).direction
    with _optuna_plot():  # quiet: "a new study created in memory"
        study = optuna.create_study(direction=direction, study_name=summary.name)
    for t in done:
        params = {k: hashable(t.params[k]) for k in keys if k in t.params}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=t.metrics[metric]))
    return study


def _distribution(values: list):
    plain = [hashable(v) for v in values]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in plain) and len(set(plain)) > 1:
        low, high = min(plain), max(plain)
        log = low > 0 and high / low >= 10  # learning rates, ranks spanning a decade
        if all(isinstance(v, int) for v in plain):
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    return CategoricalDistribution(sorted(set(plain), key=str))


def hashable(value):
    """A setting as a dict key or Optuna choice: lists (target_modules) become tuples."""
    return tuple(value) if isinstance(value, list) else value


def parallel_coordinates(study: optuna.Study, target_name: str) -> str:
    """Optuna's parallel-coordinate plot of the swept settings against the target, as SVG."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with _optuna_plot(size_in=(8.5, 3.8)):  # wide: a log axis' tick labels need room before the colour bar
        ax = plot_parallel_coordinate(study, target=_target(study), target_name=target_name)
        _retitle(ax, f"Parallel coordinates: swept settings against {target_name} ({completed(study)} trials)")
        return _svg_of(ax, "parallel")


def importances(study: optuna.Study, target_name: str) -> str:
    """Optuna's importance bar chart (fANOVA), ranked, with the method named, as SVG."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    params = {k for t in study.get_trials(deepcopy=False) for k in t.params}
    with _optuna_plot(size_in=(7.5, 1.2 + 0.45 * max(len(params), 2))):  # one bar per setting
        ax = plot_param_importances(study, evaluator=FanovaImportanceEvaluator(n_trees=64, seed=0),
                                    target=_target(study), target_name=target_name)
        _retitle(ax, f"Hyperparameter importance for {target_name} ({completed(study)} trials)\n{EVALUATOR}")
        return _svg_of(ax, "importance")


def _retitle(ax, text: str) -> None:
    """Replace Optuna's own title (it uses the centre or the left slot) with ours."""
    for where in ("center", "left", "right"):
        ax.set_title("", loc=where)
    ax.set_title(text, loc="left", fontsize=10)


@contextmanager
def _optuna_plot(size_in: tuple[float, float] | None = None) -> Iterator[None]:
    """Optuna's matplotlib plots set a global style and log and warn (experimental): keep all that to them.
    `size_in` is the figure size they are laid out at (inches)."""
    with matplotlib.rc_context({"figure.figsize": size_in} if size_in else {}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


def importance_problem(study: optuna.Study) -> str | None:
    """Why Optuna cannot read importances from this study, or None."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varying = {k for k in {k for t in trials for k in t.params}
               if len({repr(t.params.get(k)) for t in trials}) > 1}
    if len(trials) < 2 or not varying:
        return (f"hyperparameter importance needs at least 2 completed trials whose settings differ; "
                f"this sweep has {len(trials)} completed fine-tune(s)")
    values = [_target(study)(t) if _target(study) else t.value for t in trials]
    if any(v is None or not math.isfinite(v) for v in values) or len(set(values)) < 2:
        return "hyperparameter importance needs the completed trials' values to differ"
    return None


def _target(study: optuna.Study):
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def completed(study: optuna.Study) -> int:
    """How many of its trials completed."""
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _svg_of(ax, name: str) -> str:
    import matplotlib.pyplot as plt

    fig = ax.figure
    try:
        return to_svg(fig, name)
    finally:
        plt.close(fig)
