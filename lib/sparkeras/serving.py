"""The registered model as MLflow consumers see it: log the pyfunc of
:mod:`sparkeras.pyfunc_model` (named columns in, the scored table's columns out), and load
the Keras model back for sparkeras's own scoring and the champion gate.

A model's ``config`` (the pyfunc's ``model_config``) says what it takes and returns:
``{"kind": "tabular", "task", "numeric", "binary", "categorical", "labels",
"prediction_column"}`` or ``{"kind": "image", "input_shape", "labels"}``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from importlib import metadata as _metadata
from pathlib import Path

import numpy as np

KERAS_FILE = "model.keras"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
IMAGE_CODE = Path(__file__).parent / "workloads" / "image_formats.py"
TOP_K = 3

log = logging.getLogger(__name__)


def tabular_config(schema, labels) -> dict:
    return {"kind": "tabular", "task": schema.target.kind,
            "numeric": [f.name for f in schema.numeric],
            "binary": [f.name for f in schema.features if f.kind == "binary"],
            "categorical": [f.name for f in schema.categorical],
            "labels": list(labels), "prediction_column": schema.prediction_column}


def image_config(shape, labels) -> dict:
    return {"kind": "image", "input_shape": list(shape), "labels": list(labels)}


def output_columns(config: dict) -> list[tuple[str, str]]:
    """(name, MLflow type) of each column the pyfunc returns, in order."""
    labels = config["labels"]
    if config["kind"] == "image":
        tops = [(f"top_{i}_{part}", kind) for i in range(1, min(TOP_K, len(labels)) + 1)
                for part, kind in (("label", "string"), ("probability", "double"))]
        return [("predicted_label", "string"), ("confidence", "double"), *tops]
    if config["task"] == "regression":
        return [(config["prediction_column"], "double")]
    return [(config["prediction_column"], "string"), ("confidence", "double"),
            *[(f"probability_{label}", "double") for label in labels]]


def signature(config: dict):
    """Named input columns (numbers and flags ``double``, categories ``string``, images
    ``binary``) -> the output columns."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema
    if config["kind"] == "image":
        inputs = [ColSpec("binary", "image")]
    else:
        inputs = [ColSpec("double", n) for n in config["numeric"]]
        inputs += [ColSpec("string", n) for n in config["categorical"]]
    return ModelSignature(inputs=Schema(inputs),
                          outputs=Schema([ColSpec(t, n) for n, t in output_columns(config)]))


def input_example(config: dict, x: dict):
    """A few rows of a decoded batch (``x``: the Keras model's named inputs) as the named
    columns the pyfunc takes."""
    import pandas as pd
    if config["kind"] == "image":
        images = x["image"] if isinstance(x, dict) else x
        return pd.DataFrame({"image": [np.ascontiguousarray(a, dtype=np.uint8).tobytes()
                                       for a in images]})
    x = x if isinstance(x, dict) else {"features": x}
    columns = {}
    if config["numeric"]:
        for k, name in enumerate(config["numeric"]):
            columns[name] = x["features"][:, k].astype(np.float64)
    for name in config["categorical"]:
        columns[name] = [v.decode() if isinstance(v, bytes) else str(v)
                         for v in x[name].reshape(-1)]
    return pd.DataFrame(columns)


def pip_requirements(config: dict) -> list[str]:
    """What a serving environment needs (TensorFlow's GPU/CPU flavour is the server's)."""
    names = ["mlflow", "tensorflow", "keras", "numpy", "pandas"]
    if config["kind"] == "image":
        names.append("pillow")
    out = []
    for name in names:
        dist = {"tensorflow": ("tensorflow", "tensorflow-cpu")}.get(name, (name,))
        version = None
        for d in dist:
            try:
                version = _metadata.version(d)
                break
            except _metadata.PackageNotFoundError:
                continue
        out.append(f"{name}=={version}" if version else name)
    return out


def log_model(keras_model, config: dict, example, registered_model_name: str,
              metadata: dict):
    """Log ``keras_model`` as the sparkeras pyfunc in the active run and register it.

    A tabular model also gets its numpy forward pass (:mod:`.mlp_forward`), registered
    only when it gives the Keras model's outputs; ``metadata["numpy_forward"]`` then says
    how close they were. An image CNN gets the numpy pass its scoring workers start with
    (:mod:`.cnn_forward`, ``metadata["numpy_start"]``), on the same condition."""
    import mlflow

    from . import cnn_forward, mlp_forward
    with tempfile.TemporaryDirectory(prefix="sparkeras-model-") as tmp:
        path = os.path.join(tmp, KERAS_FILE)
        keras_model.save(path)
        artifacts = {"keras_model": path}
        plan = mlp_forward.export(keras_model, config)
        if plan is not None:
            diff = mlp_forward.max_difference(plan, keras_model,
                                              mlp_forward.random_inputs(config, plan))
            metadata = _attach_plan(tmp, artifacts, metadata, "numpy_forward", mlp_forward,
                                    plan, diff, "scoring will use TensorFlow")
        start = cnn_forward.export(keras_model) if config["kind"] == "image" else None
        if start is not None:
            diff = cnn_forward.max_difference(
                start, keras_model, cnn_forward.random_images(config["input_shape"]))
            metadata = _attach_plan(tmp, artifacts, metadata, "numpy_start", cnn_forward,
                                    start, diff, "scoring workers will start in TensorFlow")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE),
            artifacts=artifacts, model_config=config,
            code_paths=[str(IMAGE_CODE)] if config["kind"] == "image" else None,
            signature=signature(config), input_example=example,
            pip_requirements=pip_requirements(config),
            registered_model_name=registered_model_name, metadata=metadata)


def _attach_plan(tmp: str, artifacts: dict, metadata: dict, key: str, module, plan: dict,
                 diff: float, otherwise: str) -> dict:
    """Add a numpy plan (``module``: mlp_forward or cnn_forward) to the model's artifacts
    under ``key`` when it matches the Keras model (``diff`` <= ``module.TOLERANCE``); the
    model's metadata, with ``key`` saying how close it was."""
    if diff > module.TOLERANCE:
        log.warning(f"the numpy forward pass differs from the Keras model by {diff:.3g} "
                    f"(more than {module.TOLERANCE}): {otherwise}")
        return metadata
    path = os.path.join(tmp, module.PLAN_FILE)
    Path(path).write_bytes(module.to_bytes(plan))
    artifacts[key] = path
    return {**metadata, key: {"file": f"artifacts/{module.PLAN_FILE}",
                              "max_abs_difference": diff}}


def load_keras(uri: str):
    """The Keras model of a registered sparkeras model (the pyfunc's ``model.keras``; models
    logged before the pyfunc existed: their TensorFlow flavour)."""
    import keras
    import mlflow
    from mlflow.models import get_model_info
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    if "tensorflow" in get_model_info(uri).flavors:
        return mlflow.tensorflow.load_model(uri)
    with tempfile.TemporaryDirectory(prefix="sparkeras-model-") as tmp:
        path = ModelsArtifactRepository(uri).download_artifacts(f"artifacts/{KERAS_FILE}", tmp)
        return keras.saving.load_model(path, compile=False)


def download(uri: str, artifact: str) -> bytes:
    """The bytes of one file of a registered model (``artifacts/model.keras``, ...)."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    with tempfile.TemporaryDirectory(prefix="sparkeras-model-") as tmp:
        return Path(ModelsArtifactRepository(uri).download_artifacts(artifact, tmp)).read_bytes()
