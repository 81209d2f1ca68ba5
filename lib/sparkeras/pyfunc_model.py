"""The MLflow model every sparkeras training run registers: named columns in, the scored
table's prediction columns out, for any MLflow consumer (``mlflow models serve``,
``sparkeras serve``, ``mlflow.pyfunc.spark_udf``, Databricks Model Serving, ``ai_query``).

MLflow loads it from this file alone ("models from code"), with the trained Keras model
as the artifact ``model.keras`` and what the model needs to know (task, features, labels,
image size) as its ``model_config``. It imports nothing from sparkeras, so a server needs
only keras/tensorflow, numpy, pandas and, for images, Pillow plus ``image_formats.py``,
which the model carries in its ``code`` directory.

- **Tabular** (incidents and declared schemas): one column per feature (numbers and 0/1
  flags as ``double``, so that ``1.7`` reaches the 0/1 check instead of being truncated to
  1 by MLflow; categories as ``string``) -> ``predicted_<target>`` and,
  for classification, ``confidence`` and ``probability_<class>``, as ``sparkeras score``
  writes them.
- **Images**: a binary ``image`` column holding an encoded image (JPEG, PNG, ...; base64
  in JSON requests) or raw ``uint8`` pixels at the model's size -> ``predicted_label``,
  ``confidence`` and the top 3 labels with their probabilities.

A request with rows that cannot be scored is refused as a whole with a 4xx error naming
each bad row and why (``row 2: CPU_LOAD must be 0 or 1, got 7``).
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

KERAS_ARTIFACT = "keras_model"
MAX_REASONS = 10


class SparkerasModel(PythonModel):
    """A sparkeras Keras model behind named columns (see the module docstring)."""

    def load_context(self, context):
        import keras
        import tensorflow as tf
        self.config = dict(context.model_config)
        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        if self.config["kind"] == "image":
            shape = tuple(self.config["input_shape"])
            signature = {"image": tf.TensorSpec((None, *shape), tf.uint8)}
        else:
            signature = {}
            if self.config["numeric"]:
                signature["features"] = tf.TensorSpec((None, len(self.config["numeric"])),
                                                      tf.float32)
            signature.update({c: tf.TensorSpec((None, 1), tf.string)
                              for c in self.config["categorical"]})
        single = next(iter(signature)) if len(signature) == 1 else None
        model = self.model

        # The same traced forward pass as the batch scoring UDF, so both give the same
        # numbers for the same rows.
        @tf.function(input_signature=[signature])
        @tf.autograph.experimental.do_not_convert
        def forward(x):
            return model(x[single] if single else x, training=False)
        self._forward = forward

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if self.config["kind"] == "image":
            return self._predict_images(model_input)
        return self._predict_table(model_input)

    # ------------------------------------------------------------------------- tables
    def _predict_table(self, df: pd.DataFrame) -> pd.DataFrame:
        cfg = self.config
        binary = set(cfg["binary"])
        problems = []
        numbers = {}
        for name in cfg["numeric"]:
            values = pd.to_numeric(df[name], errors="coerce").astype("float64")
            for i in np.flatnonzero(df[name].isna().to_numpy()):
                problems.append((i, f"missing {name}"))
            for i in np.flatnonzero((values.isna() & df[name].notna()).to_numpy()):
                problems.append((i, f"{name} must be a number, got {_shown(df[name].iloc[i])}"))
            if name in binary:
                bad = values.notna() & ~values.isin([0.0, 1.0])
                for i in np.flatnonzero(bad.to_numpy()):
                    problems.append((i, f"{name} must be 0 or 1, got {_shown(df[name].iloc[i])}"))
            numbers[name] = values.to_numpy(dtype=np.float32)
        for name in cfg["categorical"]:
            for i in np.flatnonzero(df[name].isna().to_numpy()):
                problems.append((i, f"missing {name}"))
        _refuse(problems, len(df))
        x = {}
        if cfg["numeric"]:
            x["features"] = np.stack([numbers[n] for n in cfg["numeric"]], axis=1)
        for name in cfg["categorical"]:
            x[name] = df[name].astype(str).to_numpy(dtype=object).reshape(-1, 1)
        out = self._forward(x).numpy()
        prediction = cfg["prediction_column"]
        if cfg["task"] == "regression":
            return pd.DataFrame({prediction: out[:, 0].astype(np.float64)})
        return _classes(out, cfg["labels"], prediction, "probability_{}")

    # ------------------------------------------------------------------------- images
    def _predict_images(self, df: pd.DataFrame) -> pd.DataFrame:
        try:                      # the copy the model carries (its code directory) ...
            from image_formats import ImageError, to_tensor
        except ImportError:       # ... or sparkeras's own, when loaded by hand
            from sparkeras.workloads.image_formats import ImageError, to_tensor
        h, w, c = self.config["input_shape"]
        images = np.zeros((len(df), h, w, c), dtype=np.uint8)
        problems = []
        for i, payload in enumerate(df["image"]):
            if isinstance(payload, (bytearray, memoryview)):
                payload = bytes(payload)
            if not (payload is None or isinstance(payload, bytes)):
                problems.append((i, f"image must be bytes, got {type(payload).__name__}"))
                continue
            try:
                images[i] = _tensor(payload, h, w, c, to_tensor, ImageError)
            except ImageError as exc:
                problems.append((i, f"image: {exc}"))
        _refuse(problems, len(df))
        probs = self._forward({"image": images}).numpy() if len(df) else np.zeros((0, 0))
        labels = self.config["labels"]
        out = _classes(probs, labels, "predicted_label", None)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :min(3, len(labels))]
        for j in range(top.shape[1]):
            out[f"top_{j + 1}_label"] = np.asarray(labels, dtype=object)[top[:, j]]
            out[f"top_{j + 1}_probability"] = np.take_along_axis(
                probs, top[:, j:j + 1], axis=1)[:, 0].astype(np.float64)
        return out


ENCODED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"RIFF", b"II*\x00",
                 b"MM\x00*")


def _tensor(payload, h: int, w: int, c: int, to_tensor, image_error) -> np.ndarray:
    """An encoded image of any size, or raw pixels: exactly ``h * w * c`` bytes that are
    not a decodable image file (raw pixels may start like one by chance)."""
    if payload is not None and len(payload) == h * w * c:
        if payload.startswith(ENCODED_MAGIC):
            try:
                return to_tensor(payload, None, h, w, c)[0]
            except image_error:
                pass
        return to_tensor(payload, (h, w, c), h, w, c)[0]
    return to_tensor(payload, None, h, w, c)[0]


def _classes(probs: np.ndarray, labels, prediction: str, probability) -> pd.DataFrame:
    """The predicted label (the first of equal maxima, as the scoring UDF), its probability
    as ``confidence`` and, when ``probability`` is a pattern, one column per class."""
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    out = pd.DataFrame({
        prediction: np.asarray(labels, dtype=object)[best],
        "confidence": (probs.max(axis=1) if len(probs) else np.zeros(0)).astype(np.float64)})
    if probability:
        for k, label in enumerate(labels):
            out[probability.format(label)] = probs[:, k].astype(np.float64)
    return out


def _shown(value) -> str:
    """A request's value as the user wrote it: 7 (not 7.0 or np.float64(7.0)), 1.5, 'abc'."""
    if isinstance(value, (str, bytes)):
        return repr(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _refuse(problems: list, rows: int) -> None:
    """Raise one client error naming each bad row (0-based, in request order)."""
    if not problems:
        return
    problems.sort(key=lambda p: p[0])
    bad_rows = len({i for i, _ in problems})
    listed = "; ".join(f"row {i}: {reason}" for i, reason in problems[:MAX_REASONS])
    more = f"; and {len(problems) - MAX_REASONS} more" if len(problems) > MAX_REASONS else ""
    raise MlflowException(f"{bad_rows} of {rows} rows cannot be scored: {listed}{more}",
                          error_code=INVALID_PARAMETER_VALUE)


mlflow.models.set_model(SparkerasModel())
