"""The sweep's search algorithm: Ray Tune's variant generator (grid / random) or Optuna's TPE.

``tune.search: optuna`` runs Optuna's Tree-structured Parzen Estimator (Bergstra et al., 2011)
through Ray Tune's ``OptunaSearch``: after ``tune.startup_trials`` random trials, each new
trial is proposed from the AP of the trials so far. The sampler is multivariate (one density
over all keys), so anchors and the IoU thresholds that go with them are modelled jointly. ASHA
still stops weak trials; a stopped trial is told to Optuna with the AP it reached.
"""

from __future__ import annotations

import warnings
from typing import Any

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from pipeline.params import TuneParams

__all__ = ["MetricReportsOnlyOptunaSearch", "build_search_alg", "startup_trials"]


def startup_trials(tune: TuneParams) -> int:
    """Random trials before TPE starts modelling: ``tune.startup_trials``, else a third of the trials (2..10)."""
    if tune.startup_trials is not None:
        return tune.startup_trials
    return min(10, max(2, tune.num_samples // 3))


class MetricReportsOnlyOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores reports without the metric.

    Each trial first reports its anchor fit (epoch 0, no AP yet); ``OptunaSearch`` would fail
    on it with a ``KeyError`` when passing it on as an intermediate value.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def build_search_alg(tune: TuneParams) -> Any:
    """The ``search_alg`` of the sweep's ``TuneConfig`` (``max_concurrent_trials`` applied here)."""
    if tune.search != "optuna":
        # max_concurrent_trials is ignored when a BasicVariantGenerator is passed: limit it here
        return BasicVariantGenerator(random_state=tune.seed, max_concurrent=tune.max_concurrent_trials)
    import optuna

    with warnings.catch_warnings():
        # Optuna marks the multivariate TPE argument "experimental" (its interface may change): a note to
        # Optuna's API users, which this call is, not about the sweep. Only that message is filtered.
        warnings.filterwarnings("ignore", message=r"Argument ``multivariate`` is an experimental feature",
                                category=optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=startup_trials(tune), multivariate=True)
    searcher = MetricReportsOnlyOptunaSearch(metric=tune.metric, mode=tune.mode, sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=tune.max_concurrent_trials)
