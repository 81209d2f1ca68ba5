"""Keras model builders. Call them inside ``strategy.scope()``."""
from __future__ import annotations


def build_mlp(n_features: int, n_classes: int, hidden_units: list[int], learning_rate: float,
              seed: int = 42):
    """The classic root-cause MLP: Dense(relu) layers, then softmax over the classes."""
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(n_features,), name="features", dtype="float32")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="root_cause_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
