"""MLflow: experiments, the logged model, the registry and the champion gate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .config import Config


def setup_mlflow(cfg: Config):
    """Point MLflow at the configured tracking and registry stores; return the module."""
    import mlflow
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.registry())
    return mlflow


def use_experiment(cfg: Config, workload: str) -> str:
    """Create (if needed) and activate the pipeline's experiment; return its id."""
    import mlflow
    name = cfg.experiment_name(workload)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if cfg.mlflow.artifact_location:
            location = Path(cfg.mlflow.artifact_location).as_uri() \
                if "://" not in cfg.mlflow.artifact_location else cfg.mlflow.artifact_location
        exp_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@dataclass
class ChampionDecision:
    became_champion: bool
    reason: str
    previous_version: Optional[str] = None
    previous_score: Optional[float] = None


@dataclass(frozen=True)
class GateMetric:
    """The test metric the champion gate compares: its key, how it reads, its direction."""
    key: str
    name: str
    higher_is_better: bool

    def at_least_as_good(self, candidate: float, champion: float) -> bool:
        return candidate >= champion if self.higher_is_better else candidate <= champion


MACRO_F1 = GateMetric("macro_f1", "macro F1", True)
RMSE = GateMetric("rmse", "RMSE", False)
COMPARABLE_KEYS = ("labels", "features", "input_shape", "task")


def champion_gate(cfg: Config, model_name: str, version: str, candidate: float,
                  evaluate: Callable[[object], float], contract: Optional[dict] = None,
                  metric: GateMetric = MACRO_F1) -> ChampionDecision:
    """Move the champion alias to ``version`` only if its test ``metric`` is at least as good
    as the current champion's (macro F1: higher; RMSE: lower), both measured now on the same
    test split (``evaluate`` scores a loaded model on it).

    A champion whose labels, features, input shape or task differ from ``contract`` cannot
    be measured on this split: the alias stays, and the reason says why."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    client = MlflowClient()
    alias = cfg.registry.champion_alias
    try:
        current = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        current = None
    if current is None:
        client.set_registered_model_alias(model_name, alias, version)
        return ChampionDecision(True, f"no '{alias}' yet: version {version} becomes {alias}")
    if str(current.version) == str(version):
        return ChampionDecision(True, f"version {version} is already {alias}")
    champion_uri = f"models:/{model_name}/{current.version}"
    from mlflow.models import get_model_info
    meta = get_model_info(champion_uri).metadata or {}
    differs = [k for k in COMPARABLE_KEYS
               if contract and k in contract and k in meta and _plain(meta[k]) != _plain(contract[k])]
    if differs:
        return ChampionDecision(
            False, f"{alias} version {current.version} has other {', '.join(differs)}: it "
                   f"cannot be compared on this test split, so {alias} stays at version "
                   f"{current.version} (move the alias by hand, or register under another "
                   f"model name)", str(current.version))
    from .serving import load_keras
    champion = load_keras(champion_uri)
    score = float(evaluate(champion))
    relation = ">=" if metric.higher_is_better else "<="
    if metric.at_least_as_good(candidate, score):
        client.set_registered_model_alias(model_name, alias, version)
        return ChampionDecision(
            True, f"test {metric.name} {candidate:.4f} {relation} {score:.4f} of {alias} "
                  f"version {current.version} on the same test split", str(current.version),
            score)
    worse = "<" if metric.higher_is_better else ">"
    return ChampionDecision(
        False, f"test {metric.name} {candidate:.4f} {worse} {score:.4f} of {alias} version "
               f"{current.version} on the same test split: {alias} stays at version "
               f"{current.version}", str(current.version), score)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def model_versions(cfg: Config, model_name: str):
    """Every registered version of ``model_name``, newest first, as a pandas DataFrame:
    version, aliases, the test metrics its run measured (macro F1 and accuracy for
    classification; RMSE and R^2 for regression), run id, creation time."""
    import pandas as pd
    from mlflow import MlflowClient
    setup_mlflow(cfg)
    client = MlflowClient()
    # Version search results do not carry aliases in every store; the registered model does.
    aliases: dict = {}
    for alias, version in (client.get_registered_model(model_name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        rows.append({"version": int(mv.version),
                     "aliases": ", ".join(sorted(aliases.get(str(mv.version), []))),
                     "test_macro_f1": metrics.get("test_macro_f1"),
                     "test_accuracy": metrics.get("test_accuracy"),
                     "test_rmse": metrics.get("test_rmse"), "test_r2": metrics.get("test_r2"),
                     "run_id": mv.run_id,
                     "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC")})
    columns = ["version", "aliases", "test_macro_f1", "test_accuracy", "test_rmse", "test_r2",
               "run_id", "created"]
    return pd.DataFrame(rows, columns=columns).sort_values("version", ascending=False,
                                                          ignore_index=True)
