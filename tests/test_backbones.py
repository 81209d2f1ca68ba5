"""Transfer backbones: the course's VGG16 and ResNet50 (v1) with caffe-style input, built
from local weights files (nothing can be downloaded)."""
import numpy as np
import pytest

from sparkeras.models import BACKBONES, build_image_model, caffe_preprocessing


def test_caffe_preprocessing_is_exactly_keras_preprocess_input():
    import keras
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 9, 7, 3)).astype("float32")
    ours = np.asarray(caffe_preprocessing()(pixels))
    for module in (keras.applications.vgg16, keras.applications.resnet50):
        theirs = module.preprocess_input(pixels.copy())
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,ctor,prefix", [("vgg16", "VGG16", "vgg16"),
                                                  ("resnet50", "ResNet50", "resnet50")])
def test_course_backbones_load_local_weights_and_survive_saving(backbone, ctor, prefix,
                                                                tmp_path):
    import keras
    assert BACKBONES[backbone] == (ctor, "caffe")
    reference = getattr(keras.applications, ctor)(input_shape=(32, 32, 3), include_top=False,
                                                  weights=None, pooling="avg")
    weights = tmp_path / f"{backbone}_notop.weights.h5"
    reference.save_weights(str(weights))
    model = build_image_model((32, 32, 3), 3, "transfer", 1e-3, augment=False,
                              backbone=backbone, backbone_weights=str(weights))
    base = next(layer for layer in model.layers if layer.name.startswith(prefix))
    assert not base.trainable
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(),
                                                    reference.get_weights()))
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again.predict_on_batch(images), model.predict_on_batch(images),
                               atol=1e-6)
