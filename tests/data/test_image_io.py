"""Image modes are converted to RGB uint8 the documented way; label images keep their ids."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from course_lib.data.image_io import read_json, read_label_png, read_rgb, write_jpeg, write_json, write_png


def save(tmp_path, image: Image.Image, name: str = "x.png"):
    path = tmp_path / name
    image.save(path)
    return path


def test_rgb_is_read_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = read_rgb(save(tmp_path, Image.fromarray(rgb)))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and (out == rgb).all() and out.flags.writeable


def test_grey_is_repeated_in_three_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_rgb(save(tmp_path, Image.fromarray(grey)))
    assert out.shape == (3, 4, 3) and (out == grey[..., None]).all()


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    out = read_rgb(save(tmp_path, Image.fromarray(rgba, "RGBA")))
    assert out.tolist() == [[[10, 20, 30], [200, 100, 50]]]
    la = Image.fromarray(np.array([[[77, 0]]], dtype=np.uint8), "LA")
    assert read_rgb(save(tmp_path, la, "la.png")).tolist() == [[[77, 77, 77]]]


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode == "I;16"
    out = read_rgb(save(tmp_path, image))
    assert out[..., 0].tolist() == [[0, 1, 128, 255]] and (out[..., 0] == out[..., 2]).all()


def test_32_bit_integer_in_16_bit_range_is_scaled_outside_is_an_error(tmp_path):
    ok = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert read_rgb(save(tmp_path, ok, "ok.tif"))[..., 1].tolist() == [[0, 255]]
    bad = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I")
    with pytest.raises(ValueError, match=r"bad\.tif.*outside the 16-bit range"):
        read_rgb(save(tmp_path, bad, "bad.tif"))


def test_palette_is_looked_up(tmp_path):
    image = Image.frombytes("P", (2, 1), bytes([0, 1]))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    assert read_rgb(save(tmp_path, image)).tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_float_image_and_garbage_are_errors_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"f\.tif.*mode F"):
        read_rgb(save(tmp_path, Image.fromarray(np.zeros((2, 2), np.float32)), "f.tif"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(OSError, match="junk.png"):
        read_rgb(junk)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")


def test_label_png_keeps_palette_indices_and_refuses_colour_masks(tmp_path):
    ids = np.array([[0, 1, 255], [20, 3, 0]], dtype=np.uint8)
    write_png(tmp_path / "m.png", ids, palette=[0, 0, 0, 128, 0, 0])
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
    out = read_label_png(tmp_path / "m.png")
    assert out.dtype == np.int64 and (out == ids).all()
    write_png(tmp_path / "rgb.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"rgb\.png.*mode 'RGB'"):
        read_label_png(tmp_path / "rgb.png")


def test_writers_are_deterministic_and_atomic(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgb)
    write_png(tmp_path / "b.png", rgb)
    write_jpeg(tmp_path / "a.jpg", rgb)
    write_jpeg(tmp_path / "b.jpg", rgb)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()
    write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "j.json").read_text() == '{"a":[1,2],"b":1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png", "b.jpg", "b.png", "j.json"]  # no temp files
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "c.png", rgb.astype(np.float32))
    assert not (tmp_path / "c.png").exists()


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [1, 2,')
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json(tmp_path / "nope.json")
