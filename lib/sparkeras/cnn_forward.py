"""The image CNNs' forward pass in numpy alone: what a scoring worker runs on its first
batches while TensorFlow is still being imported.

Importing TensorFlow and loading the Keras model cost a Python worker 8-13 s before its
first image prediction on a busy 2-core machine (``bench/stages.py``); numpy is already
imported by PySpark. numpy is ~1.5x slower than TensorFlow per image in the scoring UDF
(one thread each, the classic CNN on 28x28), so it is a start, not a replacement:
:class:`sparkeras.scoring.WarmStart` scores with it for a worker's first seconds, then
switches to TensorFlow.

A plan covers models that are a chain of the layers of ``build_image_model``'s ``classic_cnn``
and ``folder_cnn`` (Rescaling, Conv2D, MaxPooling2D, Flatten, Dense, and the layers that do
nothing at inference: Dropout and the random augmentations); any other model (the transfer
backbones) has none and is scored by TensorFlow from its first batch. Training registers a
plan only after checking that it gives the Keras model's probabilities within
:data:`TOLERANCE` on random images (:func:`random_images`), so both passes write the
same numbers to float32 rounding. Arrays only (no pickled objects): it travels with the task.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from .mlp_forward import from_bytes, to_bytes  # noqa: F401  (the same .npz encoding)

PLAN_FILE = "cnn_forward.npz"
TOLERANCE = 1e-5     # max |numpy - keras| on probabilities
# inference no-ops: dropout, and augmentations that are active in training only
PASS_THROUGH = {"InputLayer", "Dropout", "RandomFlip", "RandomZoom", "RandomPerspective",
                "RandomRotation", "RandomTranslation", "RandomContrast", "RandomBrightness"}
ACTIVATIONS = {"relu", "softmax", "linear"}


def _activation(layer) -> Optional[str]:
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    return name if name in ACTIVATIONS else None


def _kernel_and_bias(layer):
    """float32 kernel and bias of a Conv2D or Dense layer (zeros without a bias)."""
    weights = layer.get_weights()
    bias = weights[1] if layer.use_bias else np.zeros(weights[0].shape[-1])
    return weights[0].astype(np.float32), bias.astype(np.float32)


def export(keras_model) -> Optional[dict]:
    """The plan of an image model made of supported layers (None for any other model)."""
    if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        return None
    plan: dict = {}
    ops: list = []
    for layer in keras_model.layers:
        kind = type(layer).__name__
        i = len(ops)
        if kind in PASS_THROUGH:
            continue
        if kind == "Rescaling":
            ops.append({"op": "rescale", "scale": float(np.asarray(layer.scale)),
                        "offset": float(np.asarray(layer.offset))})
        elif kind == "Conv2D":
            if (layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1)
                    or layer.groups != 1 or layer.padding not in ("valid", "same")
                    or _activation(layer) not in ("relu", "linear")):
                return None
            plan[f"w{i}"], plan[f"b{i}"] = _kernel_and_bias(layer)
            ops.append({"op": "conv", "strides": list(layer.strides), "padding": layer.padding,
                        "activation": _activation(layer)})
        elif kind == "MaxPooling2D":
            if layer.data_format != "channels_last" or layer.padding != "valid":
                return None
            ops.append({"op": "maxpool", "pool": list(layer.pool_size),
                        "strides": list(layer.strides)})
        elif kind == "Flatten":
            ops.append({"op": "flatten"})
        elif kind == "Dense":
            if _activation(layer) is None:
                return None
            plan[f"w{i}"], plan[f"b{i}"] = _kernel_and_bias(layer)
            ops.append({"op": "dense", "activation": _activation(layer)})
        else:
            return None
    if not ops or ops[-1].get("activation") != "softmax":
        return None
    plan["meta"] = np.asarray(json.dumps({"ops": ops}))
    return plan


def _windows(x: np.ndarray, size, strides) -> np.ndarray:
    """[n, h', w', c, kh, kw] views of ``x`` [n, h, w, c] (no copy)."""
    v = np.lib.stride_tricks.sliding_window_view(x, tuple(size), axis=(1, 2))
    return v[:, ::strides[0], ::strides[1]]


def _same_padding(x: np.ndarray, size, strides) -> np.ndarray:
    pads = []
    for dim, k, s in zip(x.shape[1:3], size, strides):
        total = max((-(-dim // s) - 1) * s + k - dim, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)])


def _conv(x: np.ndarray, kernel: np.ndarray, strides, padding: str):
    """The convolution without its bias (added by the caller, after a pool if one follows)."""
    kh, kw, c, f = kernel.shape
    if padding == "same":
        x = _same_padding(x, (kh, kw), strides)
    if (kh, kw) == (1, 1):
        return x[:, ::strides[0], ::strides[1]] @ kernel.reshape(c, f)
    win = _windows(x, (kh, kw), strides)                     # n, oh, ow, c, kh, kw
    n, oh, ow = win.shape[:3]
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c)   # im2col: a copy
    return (cols @ kernel.reshape(kh * kw * c, f)).reshape(n, oh, ow, f)


def _maxpool(x: np.ndarray, pool, strides) -> np.ndarray:
    ph, pw = pool
    sh, sw = strides
    oh, ow = (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1
    out = None
    for dy in range(ph):                   # elementwise maxima of strided views: no copies
        for dx in range(pw):
            view = x[:, dy:dy + sh * (oh - 1) + 1:sh, dx:dx + sw * (ow - 1) + 1:sw]
            out = view.copy() if out is None else np.maximum(out, view, out=out)
    return out


ROWS = 32   # images per pass: the im2col copies stay in cache (28x28, the convolutions
            # alone: 5.7k images/s per core against 4.7k with 128, two processes at once)


def runner(plan: dict):
    """The forward pass of ``plan`` as a function of ``images`` (what a worker keeps):
    class probabilities float32[n, classes] for uint8[n, h, w, c], computed in float32 as
    Keras does, :data:`ROWS` images at a time."""
    ops = json.loads(str(plan["meta"]))["ops"]

    def run(images: np.ndarray) -> np.ndarray:
        if len(images) > ROWS:
            return np.concatenate([_forward(plan, ops, images[i:i + ROWS])
                                   for i in range(0, len(images), ROWS)])
        return _forward(plan, ops, images)
    return run


def forward(plan: dict, images: np.ndarray) -> np.ndarray:
    """``runner(plan)(images)``, for one batch."""
    return runner(plan)(images)


def _forward(plan: dict, ops: list, images: np.ndarray) -> np.ndarray:
    h = np.asarray(images).astype(np.float32)
    pending = None        # a convolution's (bias, activation), applied after its pool
    for i, op in enumerate(ops):
        kind = op["op"]
        if kind == "rescale":
            h = h * np.float32(op["scale"]) + np.float32(op["offset"])
        elif kind == "conv":
            h = _conv(h, plan[f"w{i}"], op["strides"], op["padding"])
            pending = (plan[f"b{i}"], op["activation"])
        elif kind == "maxpool":
            # max(x + b) = max(x) + b per channel, and relu is monotonic: both commute with
            # the pool, so they run on a quarter of the values
            h = _maxpool(h, op["pool"], op["strides"])
        elif kind == "flatten":
            h = h.reshape(len(h), -1)
        elif kind == "dense":
            h = h @ plan[f"w{i}"]
            pending = (plan[f"b{i}"], op["activation"])
        if pending is not None and (i + 1 == len(ops) or ops[i + 1]["op"] != "maxpool"):
            bias, activation = pending
            pending = None
            h += bias
            if activation == "relu":
                np.maximum(h, np.float32(0), out=h)
            elif activation == "softmax":
                e = np.exp(h - h.max(axis=-1, keepdims=True))
                h = e / e.sum(axis=-1, keepdims=True)
    return h


def random_images(shape, rows: int = 64, seed: int = 0) -> np.ndarray:
    """Images to compare a plan with its model on: uniform noise, flat black and white."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, *shape), dtype=np.uint8)
    x[0], x[1] = 0, 255
    return x


def max_difference(plan: dict, keras_model, images: np.ndarray) -> float:
    """max |plan - keras| on ``images``."""
    ours = forward(plan, images)
    theirs = np.asarray(keras_model.predict_on_batch(images))
    return float(np.abs(ours.astype(np.float64) - theirs).max()) if len(images) else 0.0
