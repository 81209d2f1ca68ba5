"""The byte-level image codecs and tensor conversion, without Spark."""
import gzip
import io
import struct

import numpy as np
import pytest
from PIL import Image

from sparkeras.workloads import image_formats as f
from sparkeras.workloads import image_synth


def mnist_images_bytes(images: np.ndarray) -> bytes:
    """IDX images exactly as MNIST ships them, header written by hand: magic 0x00000803."""
    n, rows, cols = images.shape
    return b"\x00\x00\x08\x03" + struct.pack(">III", n, rows, cols) + images.astype(np.uint8).tobytes()


def test_idx_parses_the_real_header_raw_and_gzipped():
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    data = mnist_images_bytes(images)
    assert data[:16].hex() == "00000803" "00000003" "0000001c" "0000001c"
    for blob in (data, gzip.compress(data)):
        parsed = f.parse_idx(blob, 3)
        assert parsed.shape == (3, 28, 28) and np.array_equal(parsed, images)
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 2, 1])
    assert f.parse_idx(labels, 1).tolist() == [7, 2, 1]
    # our writer produces the same bytes as the hand-written header
    assert gzip.decompress(f.encode_idx(images.astype(np.uint8))) == data


@pytest.mark.parametrize("blob, message", [
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02", "has 1 dimensions; images files have 3"),
    (b"\x12\x34\x08\x03" + b"\x00" * 12, "does not start with two zero bytes"),
    (b"\x00\x00\x0d\x03" + b"\x00" * 12, "unsupported IDX data type 0x0d"),
    (b"\x00\x00\x08\x03" + struct.pack(">III", 2, 28, 28) + b"\x00" * 1000, "(truncated)"),
    (b"\x00\x00", "shorter than the header"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip data"),
])
def test_idx_format_errors_name_the_problem(blob, message):
    with pytest.raises(f.FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        f.parse_idx(blob, 3)


def test_cifar_records_are_label_then_rgb_planes():
    img = np.zeros((32, 32, 3), np.uint8)
    img[0, 1] = (10, 20, 30)            # row 0, column 1: R=10, G=20, B=30
    record = bytearray(f.CIFAR_RECORD)
    record[0] = 6
    record[1 + 1] = 10                  # red plane, pixel 1
    record[1 + 1024 + 1] = 20           # green plane
    record[1 + 2048 + 1] = 30           # blue plane
    assert f.encode_cifar(np.array([6]), img[None]) == bytes(record)
    labels, images, rest = f.parse_cifar(bytes(record) * 2 + b"\x05" * 100)
    assert labels.tolist() == [6, 6] and rest == 100
    assert images.shape == (2, 32, 32, 3) and images[1, 0, 1].tolist() == [10, 20, 30]
    assert f.parse_cifar_meta("airplane\nautomobile\n\n") == ["airplane", "automobile"]


def _encoded(mode: str, size, fmt: str, color=(200, 30, 30, 0)) -> bytes:
    img = Image.new(mode, size, color[:len(mode)] if mode not in ("L", "P") else 128)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_decode_converts_any_mode_and_size():
    rgb = f.decode_image(_encoded("RGB", (50, 20), "JPEG"), 8, 12, 3)
    assert rgb[0].shape == (8, 12, 3) and rgb[1:] == (20, 50)
    assert abs(int(rgb[0][4, 6, 0]) - 200) < 8 and abs(int(rgb[0][4, 6, 1]) - 30) < 8
    gray = f.decode_image(_encoded("RGB", (9, 9), "PNG"), 9, 9, 1)[0]
    assert gray.shape == (9, 9, 1) and int(gray[0, 0, 0]) == round(0.299 * 200 + 0.587 * 30 + 0.114 * 30)
    # fully transparent pixels become white
    assert f.decode_image(_encoded("RGBA", (4, 4), "PNG"), 4, 4, 3)[0].min() == 255
    assert f.decode_image(_encoded("L", (30, 40), "PNG"), 5, 5, 3)[0].shape == (5, 5, 3)
    assert f.decode_image(_encoded("P", (6, 6), "PNG"), 6, 6, 3)[0].shape == (6, 6, 3)


@pytest.mark.parametrize("payload, message", [
    (b"", "empty file"),
    (None, "empty file"),
    (b"hello, I am a text file\n", "not an image"),
])
def test_decode_errors(payload, message):
    with pytest.raises(f.ImageError, match=message):
        f.decode_image(payload, 8, 8, 3)


def test_truncated_jpeg_is_corrupt():
    data = _encoded("RGB", (64, 64), "JPEG")
    with pytest.raises(f.ImageError, match="corrupt image"):
        f.decode_image(data[: len(data) // 2], 8, 8, 3)


def test_raw_tensors_pass_through_or_resize():
    raw = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28, 1).astype(np.uint8)
    same = f.raw_to_tensor(raw.tobytes(), (28, 28, 1), 28, 28, 1)
    assert np.array_equal(same, raw)
    assert f.raw_to_tensor(raw.tobytes(), (28, 28, 1), 32, 32, 3).shape == (32, 32, 3)
    with pytest.raises(f.ImageError, match="needs 784 bytes, got 10"):
        f.raw_to_tensor(b"0123456789", (28, 28, 1), 28, 28, 1)


def test_synthetic_images_are_deterministic_whatever_the_range():
    a, la = image_synth.synthetic_images(0, 2500, 10, 28, 28, 1, seed=3)
    b, lb = image_synth.synthetic_images(1700, 500, 10, 28, 28, 1, seed=3)
    assert np.array_equal(a[1700:2200], b) and np.array_equal(la[1700:2200], lb)
    c, _ = image_synth.synthetic_images(0, 10, 10, 28, 28, 1, seed=4)
    assert not np.array_equal(a[:10], c)
    assert a.dtype == np.uint8 and set(la.tolist()) == set(range(10))
    counts = np.bincount(la, minlength=10)
    assert counts.min() > 200 and counts.max() < 300          # balanced classes
    assert image_synth.class_names(4) == ["angle_000", "angle_045", "angle_090", "angle_135"]


def test_image_models_take_uint8_and_augment_only_in_training():
    from sparkeras.models import build_image_model, resolve_architecture
    assert resolve_architecture("auto", 28, 28) == "classic_cnn"
    assert resolve_architecture("auto", 150, 150) == "folder_cnn"
    model = build_image_model((48, 48, 3), 2, "folder_cnn", 1e-3, seed=1)
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["image", "scale", "flip", "zoom", "perspective"]
    assert [n for n in names if n.startswith("conv_")] == ["conv_1", "conv_2", "conv_3"]
    assert model.get_layer("dense").units == 128 and model.input.dtype == "uint8"
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    assert np.array_equal(model.predict_on_batch(x), model.predict_on_batch(x))
    with pytest.raises(ValueError, match="needs RGB images"):
        build_image_model((28, 28, 1), 10, "transfer", 1e-3)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_image_model((32, 32, 3), 10, "transfer", 1e-3, backbone_weights="/nope.h5")
