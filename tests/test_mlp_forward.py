"""The tabular MLP's numpy forward pass gives the Keras model's outputs (no Spark)."""
import numpy as np
import pytest

from sparkeras import mlp_forward, serving
from sparkeras.models import build_tabular
from sparkeras.schema import schema_from_dict

MIXED = {"name": "mixed", "id": "ID",
         "features": {"AGE": "number", "SMOKER": "binary", "CITY": "category", "BMI": "number",
                      "PLAN": "category"},
         "target": {"column": "Y", "kind": "classification"}}


def _model(task: str, hidden=(16, 8)):
    """A tabular model as training builds it, with random (not zero) biases."""
    spec = {**MIXED, "target": {"column": "Y", "kind": task}}
    schema = schema_from_dict(spec)
    labels = ["a", "b", "c"] if task == "classification" else []
    model = build_tabular(
        ["AGE", "SMOKER", "BMI"], [[50.0, 144.0], None, [26.0, 0.0]],
        {"CITY": ["Oslo", "Lima", "Pune"], "PLAN": ["basic", "gold"]}, list(hidden), task,
        len(labels), [120.0, 30.0] if task == "regression" else None, 1e-3, seed=3)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name.startswith("dense") or layer.name in ("probabilities", "standardized"):
            layer.set_weights([weights[0], rng.normal(0, 0.5, weights[1].shape).astype("float32")])
    return model, serving.tabular_config(schema, labels)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_plan_gives_the_keras_outputs(task):
    model, config = _model(task)
    plan = mlp_forward.export(model, config)
    x = mlp_forward.random_inputs(config, plan, rows=2000, seed=1)
    assert {"", "a value never seen in training"} <= set(x["CITY"].reshape(-1))
    ours = mlp_forward.forward(plan, x)
    theirs = np.asarray(model.predict_on_batch(x))
    assert ours.shape == theirs.shape == ((2000, 3) if task == "classification" else (2000, 1))
    assert ours.dtype == np.float32
    if task == "classification":
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    else:       # float32: about 7 significant digits, whatever the size (here up to 1e11)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * 30.0)
    assert mlp_forward.max_difference(plan, model, x) <= mlp_forward.TOLERANCE
    if task == "classification":
        np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-6)
        assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).mean() > 0.999


def test_a_zero_variance_number_is_divided_as_keras_divides_it():
    """BMI was constant in training (variance 0): Keras divides by its epsilon, not by 0."""
    model, config = _model("classification")
    plan = mlp_forward.export(model, config)
    assert plan["norm_scale"][2] == np.float32(mlp_forward.KERAS_EPSILON)
    x = mlp_forward.random_inputs(config, plan, rows=50)
    x["features"][:, 2] = 26.0
    np.testing.assert_allclose(mlp_forward.forward(plan, x),
                               np.asarray(model.predict_on_batch(x)), atol=1e-5)


def test_the_plan_travels_as_plain_arrays():
    model, config = _model("classification")
    plan = mlp_forward.export(model, config)
    again = mlp_forward.from_bytes(mlp_forward.to_bytes(plan))       # no pickled objects
    assert sorted(again) == sorted(plan)
    x = mlp_forward.random_inputs(config, plan, rows=10)
    np.testing.assert_array_equal(mlp_forward.forward(again, x), mlp_forward.forward(plan, x))


def test_other_models_have_no_plan():
    model, config = _model("classification")
    assert mlp_forward.export(model, {"kind": "image", "input_shape": [28, 28, 1],
                                      "labels": ["a", "b"]}) is None
    other = {**config, "categorical": [*config["categorical"], "MISSING"]}
    assert mlp_forward.export(model, other) is None


def test_a_linear_model_without_hidden_layers():
    model, config = _model("classification", hidden=())
    plan = mlp_forward.export(model, config)
    x = mlp_forward.random_inputs(config, plan, rows=100)
    assert mlp_forward.max_difference(plan, model, x) <= mlp_forward.TOLERANCE


def test_flags_go_through_the_model_once_per_distinct_row():
    """Inputs that are all 0/1 flags: each distinct row is computed once and the outputs
    come back in the batch's order, equal to the full pass."""
    model, config = _model("classification")
    plan = mlp_forward.export(model, config)
    rng = np.random.default_rng(7)
    flags = rng.integers(0, 2, (5000, 3)).astype(np.float32)
    x = {"features": flags, "CITY": np.full((5000, 1), "Oslo", object),
         "PLAN": np.full((5000, 1), "gold", object)}
    seen = []

    def forward(rows):
        seen.append(len(rows))
        return mlp_forward.forward(plan, {**x, "features": rows,
                                          **{c: x[c][:len(rows)] for c in ("CITY", "PLAN")}})
    out = mlp_forward.on_distinct_flags(forward, flags)
    assert seen == [8]                                  # 2**3 distinct rows, not 5,000
    np.testing.assert_allclose(out, mlp_forward.forward(plan, x), rtol=0, atol=1e-6)
    assert out.shape == (5000, 3)
    # the same row always gets the same numbers
    ones = np.all(flags == 1, axis=1)
    assert (out[ones] == out[ones][0]).all()


@pytest.mark.parametrize("features", [
    np.array([[0, 1], [1, 0.5], [0, 1]], np.float32),       # a value that is not a flag
    np.array([[0, 1]], np.float32),                         # one row
    np.zeros((4, 0), np.float32),                            # no columns
])
def test_anything_but_flags_goes_through_the_model_as_it_is(features):
    seen = []

    def forward(rows):
        seen.append(rows)
        return rows.sum(axis=1, keepdims=True)
    out = mlp_forward.on_distinct_flags(forward, features)
    assert len(seen) == 1 and seen[0] is features
    np.testing.assert_array_equal(out, features.sum(axis=1, keepdims=True))
