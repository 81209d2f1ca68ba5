"""Keras model builders. Call them inside ``strategy.scope()``."""
from __future__ import annotations

from typing import Optional

from .errors import InputNotFound, UsageError


def build_tabular(numeric: list[str], normalization: list, categories: dict[str, list[str]],
                  hidden_units: list[int], task: str, n_classes: int,
                  target_scale: Optional[list], learning_rate: float, seed: int = 42):
    """An MLP over a table's features, with its preprocessing inside the model.

    Inputs: ``features`` (``float32[k]``, the number and binary columns in schema order) and
    one ``string[1]`` input per category column. Numbers are normalised with the training
    split's (mean, variance) (``normalization``: one pair per numeric column, None for 0/1
    flags, which stay as they are); each category becomes a one-hot over its training
    vocabulary plus one out-of-vocabulary slot. Dense(relu) layers (``hidden_units``; none is
    a linear model), then softmax over the classes, or one linear output rescaled to the
    target's units (``target_scale`` = the training split's mean and standard deviation).
    The incident preset (seven flags, no categories) builds the classic root-cause MLP."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    inputs, parts = {}, []
    if numeric:
        features = keras.Input(shape=(len(numeric),), name="features", dtype="float32")
        inputs["features"] = features
        x = features
        if any(n is not None for n in normalization):
            x = layers.Normalization(mean=[n[0] if n else 0.0 for n in normalization],
                                     variance=[n[1] if n else 1.0 for n in normalization],
                                     name="normalize")(x)
        parts.append(x)
    for name, vocabulary in categories.items():
        column = keras.Input(shape=(1,), name=name, dtype="string")
        inputs[name] = column
        parts.append(layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1,
                                         output_mode="one_hot", name=f"lookup_{name}")(column))
    x = parts[0] if len(parts) == 1 else layers.Concatenate(name="concat")(parts)
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    if task == "classification":
        # float32 probabilities even under a mixed-precision policy
        outputs = layers.Dense(n_classes, activation="softmax", name="probabilities",
                               dtype="float32")(x)
    else:
        mean, std = target_scale or (0.0, 1.0)
        z = layers.Dense(1, name="standardized", dtype="float32")(x)
        outputs = layers.Rescaling(scale=std, offset=mean, name="prediction", dtype="float32")(z)
    model_inputs = inputs["features"] if list(inputs) == ["features"] else inputs
    model = keras.Model(model_inputs, outputs, name="tabular_mlp")
    loss = "sparse_categorical_crossentropy" if task == "classification" else "mse"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    return model


def _compile(model, learning_rate: float):
    import keras
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def resolve_architecture(name: str, height: int, width: int) -> str:
    """``auto``: the classic small CNN up to 32x32, the folder CNN above."""
    if name != "auto":
        return name
    return "classic_cnn" if max(height, width) <= 32 else "folder_cnn"


def augmentation(seed: int):
    """Random flip, zoom and a shear-like perspective warp (active in training only).

    ``RandomPerspective`` stands in for ``RandomShear``: in Keras 3.15 a saved RandomShear
    cannot be loaded again (its config stores the factor as [-0.2, 0.2], which its own
    constructor rejects), and a model that cannot be loaded cannot be scored.
    """
    import keras
    return [keras.layers.RandomFlip("horizontal", seed=seed, name="flip"),
            keras.layers.RandomZoom(0.2, seed=seed, name="zoom"),
            keras.layers.RandomPerspective(factor=0.5, scale=0.2, seed=seed, name="perspective")]


BACKBONES = {
    # name: (constructor in keras.applications, input scaling: (scale, offset), "caffe"
    # or None)
    "mobilenet_v2": ("MobileNetV2", (1 / 127.5, -1.0)),
    "resnet50_v2": ("ResNet50V2", (1 / 127.5, -1.0)),
    "efficientnet_b0": ("EfficientNetB0", None),   # rescales 0..255 itself
    "vgg16": ("VGG16", "caffe"),
    "resnet50": ("ResNet50", "caffe"),
}
# Caffe-style inputs (VGG16, ResNet50 v1: their ``preprocess_input``): BGR channel order,
# ImageNet channel means subtracted, no scaling.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def caffe_preprocessing(name: str = "caffe"):
    """A frozen 1x1 convolution doing exactly what ``preprocess_input`` does in caffe mode
    (RGB -> BGR, minus the channel means), so it is saved with the model: one-hot weights
    and integer pixels make it exact in float32."""
    import keras
    import numpy as np
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for out_channel, in_channel in enumerate((2, 1, 0)):
        kernel[0, 0, in_channel, out_channel] = 1.0
    layer = keras.layers.Conv2D(3, 1, name=name, trainable=False, dtype="float32")
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, -np.asarray(CAFFE_BGR_MEAN, dtype="float32")])
    return layer


def build_image_model(shape: tuple[int, int, int], n_classes: int, architecture: str,
                      learning_rate: float, seed: int = 42, augment: bool = True,
                      backbone: str = "mobilenet_v2", backbone_weights: str | None = None,
                      freeze_backbone: bool = True):
    """An image classifier taking ``uint8[h, w, c]`` and returning class probabilities.

    - ``classic_cnn``: Conv 32, pool, Conv 64, pool, Conv 64, Dense 64 (MNIST/CIFAR tutorials);
    - ``folder_cnn``: three Conv 64 + pool blocks, Dense 128 (cats-vs-dogs), with augmentation;
    - ``transfer``: a Keras Applications backbone without its top, weights from the local
      file ``backbone_weights`` (random when None), optionally frozen, with augmentation.
    Pixel scaling lives in the model, so callers feed raw ``uint8`` images.
    """
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    h, w, c = shape
    inputs = keras.Input(shape=shape, dtype="uint8", name="image")
    if architecture == "classic_cnn":
        x = layers.Rescaling(1 / 255.0, name="scale")(inputs)
        x = layers.Conv2D(32, 3, activation="relu", name="conv_1")(x)
        x = layers.MaxPooling2D(name="pool_1")(x)
        x = layers.Conv2D(64, 3, activation="relu", name="conv_2")(x)
        x = layers.MaxPooling2D(name="pool_2")(x)
        x = layers.Conv2D(64, 3, activation="relu", name="conv_3")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(64, activation="relu", name="dense")(x)
    elif architecture == "folder_cnn":
        x = layers.Rescaling(1 / 255.0, name="scale")(inputs)
        for layer in (augmentation(seed) if augment else []):
            x = layer(x)
        for i in range(1, 4):
            x = layers.Conv2D(64, 3, activation="relu", name=f"conv_{i}")(x)
            x = layers.MaxPooling2D(name=f"pool_{i}")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(0.3, seed=seed, name="dropout")(x)
        x = layers.Dense(128, activation="relu", name="dense")(x)
    elif architecture == "transfer":
        if c != 3:
            raise UsageError(f"transfer learning needs RGB images (3 channels); the table has "
                             f"{c}: ingest with images.size.<format> = [h, w, 3]")
        if min(h, w) < 32:
            raise UsageError(f"transfer backbones need images of at least 32x32, got {h}x{w}")
        if backbone_weights is not None and not __import__("os").path.isfile(backbone_weights):
            raise InputNotFound(f"images.backbone_weights: no such file {backbone_weights}")
        ctor_name, scaling = BACKBONES[backbone]
        x = layers.Rescaling(1.0, name="to_float")(inputs)
        for layer in (augmentation(seed) if augment else []):
            x = layer(x)
        if scaling == "caffe":
            x = caffe_preprocessing()(x)
        elif scaling is not None:
            x = layers.Rescaling(scaling[0], offset=scaling[1], name="scale")(x)
        base = getattr(keras.applications, ctor_name)(
            input_shape=shape, include_top=False, weights=backbone_weights, pooling="avg")
        base.trainable = not freeze_backbone
        x = base(x, training=False) if freeze_backbone else base(x)
        x = layers.Dropout(0.2, seed=seed, name="dropout")(x)
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities",
                           dtype="float32")(x)
    return _compile(keras.Model(inputs, outputs, name=f"image_{architecture}"), learning_rate)


def build_from_spec(spec: dict):
    """Build and compile a model from a JSON-able spec (what barrier workers receive)."""
    args = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "tabular":
        return build_tabular(**args)
    if spec["kind"] == "image":
        return build_image_model(tuple(args.pop("shape")), **args)
    raise ValueError(f"unknown model kind {spec['kind']!r}")
