"""The tabular MLP's forward pass in numpy alone: what a scoring worker runs instead of
importing TensorFlow and loading the Keras model.

The tabular model (:func:`sparkeras.models.build_tabular`) is a fixed architecture:
normalisation of the numbers, one-hot category lookups with one out-of-vocabulary slot,
Dense(relu) layers, then softmax probabilities or a rescaled linear output. Its weights,
exported here as a small ``.npz`` file (a plan), are all a forward pass needs. Training
registers the plan beside ``model.keras`` only after checking that both give the same
outputs (:data:`TOLERANCE`) on the model's own example rows and on random rows, so the
numbers written by ``sparkeras score`` are the Keras model's numbers (measured in
``bench/stages.py``: importing TensorFlow and loading the model cost a Python worker
seconds before its first batch; numpy is already imported by PySpark).

A plan is a dict of numpy arrays (no pickled objects), so it travels with the Spark task.
"""
from __future__ import annotations

import io
import json
from typing import Optional

import numpy as np

PLAN_FILE = "forward.npz"
TOLERANCE = 1e-5           # max |numpy - keras|, on probabilities or standardised outputs
KERAS_EPSILON = 1e-7       # Keras' Normalization divides by max(sqrt(variance), epsilon)


def export(keras_model, config: dict) -> Optional[dict]:
    """The plan of a tabular model built by ``build_tabular`` (None for any other model)."""
    if config.get("kind") != "tabular":
        return None
    layers = {layer.name: layer for layer in keras_model.layers}
    plan: dict = {}
    meta = {"task": config["task"], "numeric": len(config["numeric"]),
            "categorical": list(config["categorical"]), "dense": 0}
    if config["numeric"] and "normalize" in layers:
        norm = layers["normalize"]
        mean = np.asarray(norm.mean, dtype=np.float32).reshape(-1)
        variance = np.asarray(norm.variance, dtype=np.float32).reshape(-1)
        plan["norm_mean"] = mean
        plan["norm_scale"] = np.maximum(np.sqrt(variance), np.float32(KERAS_EPSILON))
    for i, name in enumerate(config["categorical"]):
        lookup = layers.get(f"lookup_{name}")
        if lookup is None:
            return None
        plan[f"vocab_{i}"] = np.asarray([str(v) for v in lookup.get_vocabulary()[1:]], dtype=str)
    k = 0
    while f"dense_{k}" in layers:
        kernel, bias = layers[f"dense_{k}"].get_weights()
        plan[f"kernel_{k}"], plan[f"bias_{k}"] = kernel.astype(np.float32), bias.astype(np.float32)
        k += 1
    meta["dense"] = k
    if config["task"] == "classification":
        last = layers.get("probabilities")
        if last is None:
            return None
        plan["out_kernel"], plan["out_bias"] = [w.astype(np.float32) for w in last.get_weights()]
    else:
        last, rescale = layers.get("standardized"), layers.get("prediction")
        if last is None or rescale is None:
            return None
        plan["out_kernel"], plan["out_bias"] = [w.astype(np.float32) for w in last.get_weights()]
        plan["rescale"] = np.asarray([rescale.scale, rescale.offset], dtype=np.float32)
    plan["meta"] = np.asarray(json.dumps(meta))
    return plan


def forward(plan: dict, x: dict) -> np.ndarray:
    """Outputs for a batch ``x`` (``features``: float32[n, k]; each category: strings [n, 1]),
    computed in float32 as Keras does: probabilities [n, classes] or predictions [n, 1]."""
    meta = json.loads(str(plan["meta"]))
    parts = []
    if meta["numeric"]:
        h = np.asarray(x["features"], dtype=np.float32)
        if "norm_mean" in plan:
            h = (h - plan["norm_mean"]) / plan["norm_scale"]
        parts.append(h)
    for i, name in enumerate(meta["categorical"]):
        vocab = plan[f"vocab_{i}"]
        values = np.asarray(x[name], dtype=object).reshape(-1)
        index = {v: j + 1 for j, v in enumerate(vocab.tolist())}          # 0: out of vocabulary
        codes = np.fromiter((index.get(v.decode() if isinstance(v, bytes) else str(v), 0)
                             for v in values), dtype=np.int64, count=len(values))
        parts.append(np.eye(len(vocab) + 1, dtype=np.float32)[codes])
    h = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    for k in range(meta["dense"]):
        h = np.maximum(h @ plan[f"kernel_{k}"] + plan[f"bias_{k}"], np.float32(0))
    z = h @ plan["out_kernel"] + plan["out_bias"]
    if meta["task"] == "classification":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    scale, offset = plan["rescale"]
    return z * scale + offset


def on_distinct_flags(forward, features: np.ndarray) -> np.ndarray:
    """``forward(features)``, computed once per distinct row when every value is 0 or 1.

    A model whose inputs are all flags (the incidents' seven signals) sees at most 2**k
    distinct rows, however many it scores: a batch of 50,000 incidents holds at most 128.
    Rows are packed into integers, each distinct row goes through the model once, and the
    outputs are gathered back in the batch's order, at a fraction of the full pass's cost
    (``docs/performance.md``). They equal its numbers within float32 rounding: BLAS may sum
    a row in another order in a smaller batch (measured: at most 1e-6 with random
    unit-scale weights). Identical inputs always get identical outputs. Anything that is
    not a 0/1 matrix of at most 62 columns goes through ``forward`` as it is."""
    features = np.asarray(features)
    n, k = features.shape if features.ndim == 2 else (0, 0)
    if n < 2 or not 0 < k <= 62 or not np.all((features == 0) | (features == 1)):
        return forward(features)
    codes = features.astype(np.int64) @ (np.int64(1) << np.arange(k, dtype=np.int64))
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    return forward(features[first])[inverse.reshape(-1)]


def random_inputs(config: dict, plan: dict, rows: int = 512, seed: int = 0) -> dict:
    """Rows to compare a plan with its Keras model on: flags 0/1, numbers spread around 0
    (and far from it), categories from the vocabulary and unknown ones."""
    rng = np.random.default_rng(seed)
    x = {}
    if config["numeric"]:
        binary = set(config["binary"])
        cols = [rng.integers(0, 2, rows).astype(np.float32) if n in binary
                else (rng.standard_normal(rows) * 10 ** rng.integers(0, 4, rows)).astype(np.float32)
                for n in config["numeric"]]
        x["features"] = np.stack(cols, axis=1)
    for i, name in enumerate(config["categorical"]):
        choices = [*plan[f"vocab_{i}"].tolist(), "", "a value never seen in training"]
        x[name] = np.asarray(choices, dtype=object)[rng.integers(0, len(choices), rows)
                                                    ].reshape(-1, 1)
    return x


def max_difference(plan: dict, keras_model, x: dict) -> float:
    """max |plan - keras| on the batch ``x``; regression: relative to the larger of the
    prediction and the target's standard deviation (float32 keeps ~7 digits of any size)."""
    ours = forward(plan, x)
    inputs = x["features"] if list(x) == ["features"] else x
    theirs = np.asarray(keras_model.predict_on_batch(inputs))
    diff = np.abs(ours.astype(np.float64) - theirs)
    if "rescale" in plan:
        diff = diff / np.maximum(np.abs(theirs), max(abs(float(plan["rescale"][0])), 1e-12))
    return float(diff.max()) if diff.size else 0.0


def to_bytes(plan: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **plan)
    return buf.getvalue()


def from_bytes(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
