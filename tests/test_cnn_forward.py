"""The image CNNs' numpy forward pass gives the Keras model's probabilities (no Spark)."""
import numpy as np
import pytest

from sparkeras import cnn_forward
from sparkeras.models import build_image_model


def _with_random_biases(model, seed=7):
    """Trained models have non-zero biases; fresh ones have zeros, which hide a bias bug."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if len(weights) == 2:
            layer.set_weights([weights[0], rng.normal(0, 0.3, weights[1].shape).astype("float32")])
    return model


@pytest.mark.parametrize("architecture,shape", [("classic_cnn", (28, 28, 1)),
                                                ("classic_cnn", (32, 32, 3)),
                                                ("folder_cnn", (40, 48, 3))])
def test_the_plan_gives_the_keras_probabilities(architecture, shape):
    """folder_cnn includes the augmentation layers and dropout: no-ops at inference."""
    model = _with_random_biases(build_image_model(shape, 5, architecture, 1e-3, seed=3))
    plan = cnn_forward.export(model)
    assert plan is not None
    x = cnn_forward.random_images(shape, rows=300, seed=1)
    ours = cnn_forward.forward(plan, x)
    theirs = np.asarray(model.predict_on_batch(x))
    assert ours.shape == theirs.shape == (300, 5) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).mean() > 0.99
    assert cnn_forward.max_difference(plan, model, x) <= cnn_forward.TOLERANCE


def test_strides_same_padding_and_overlapping_pools():
    """The layer options build_image_model does not use are computed as Keras computes them."""
    import keras
    from keras import layers
    inputs = keras.Input((23, 17, 2), dtype="uint8")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(6, (3, 5), strides=2, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(pool_size=3, strides=1)(x)
    x = layers.Conv2D(4, 1, use_bias=False)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(7, activation="relu")(x)
    model = _with_random_biases(keras.Model(inputs, layers.Dense(3, activation="softmax")(x)))
    plan = cnn_forward.export(model)
    x = cnn_forward.random_images((23, 17, 2), rows=50)
    np.testing.assert_allclose(cnn_forward.forward(plan, x),
                               np.asarray(model.predict_on_batch(x)), rtol=0, atol=1e-5)


def test_models_with_other_layers_have_no_plan():
    import keras
    from keras import layers
    inputs = keras.Input((16, 16, 3), dtype="uint8")
    x = layers.Conv2D(4, 3)(layers.Rescaling(1 / 255.0)(inputs))
    pooled = layers.GlobalAveragePooling2D()(layers.BatchNormalization()(x))
    assert cnn_forward.export(keras.Model(inputs, layers.Dense(2, activation="softmax")(pooled))
                              ) is None
    flat = layers.Flatten()(x)
    assert cnn_forward.export(keras.Model(inputs, layers.Dense(2, activation="tanh")(flat))
                              ) is None       # tanh: not computed here
    assert cnn_forward.export(keras.Model(inputs, layers.Dense(2)(flat))) is None  # no softmax


def test_a_plan_travels_as_arrays_only():
    model = build_image_model((28, 28, 1), 3, "classic_cnn", 1e-3)
    plan = cnn_forward.export(model)
    again = cnn_forward.from_bytes(cnn_forward.to_bytes(plan))       # allow_pickle=False
    x = cnn_forward.random_images((28, 28, 1), rows=10)
    np.testing.assert_array_equal(cnn_forward.forward(again, x), cnn_forward.forward(plan, x))
