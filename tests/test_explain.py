"""``npfcn explain``: the presets give the course text's numbers, every picture is written.

Expected values are the course's (docs: /work/shared/course-text.md, DESIGN.md's worked
examples) or computed here by plain loops, never by the code under test.  The
explanations' numbers are exact small integers or fractions, so comparisons are exact
unless stated.
"""
import io
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from npfcn.cli import main
from npfcn.teach.explain import TOPICS, explain


def run(topic, tmp_path, **options):
    out = io.StringIO()
    result = explain(topic, str(tmp_path), out=out, **options)
    for path in result["pictures"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 50 and image.height > 50
    return result, out.getvalue()


def scatter(x, w, stride):
    """Transposed convolution by its definition: each x[i, j] * w added at (i*s, j*s)."""
    k = w.shape[0]
    out = np.zeros(((x.shape[0] - 1) * stride + k, (x.shape[1] - 1) * stride + k))
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i * stride:i * stride + k, j * stride:j * stride + k] += x[i, j] * w
    return out


def test_transposed_conv_course_2x2(tmp_path):
    result, text = run("transposed-conv", tmp_path)
    x, w = result["input"], result["kernel"]
    assert x.shape == (2, 2) and w.shape == (3, 3)
    full = scatter(x, w, 2)
    np.testing.assert_array_equal(result["sum"], full)
    outputs = result["outputs"]
    assert outputs[(0, 0)]["size"] == 5                   # the course: 5x5 without padding
    assert outputs[(1, 1)]["size"] == 4                   # 4x4 with padding 1, output_padding 1
    assert outputs["same"]["size"] == 4                   # and with TensorFlow's "same"
    np.testing.assert_array_equal(outputs[(1, 1)]["output"], full[1:5, 1:5])
    np.testing.assert_array_equal(outputs["same"]["output"], full[0:4, 0:4])
    assert all(o["layer_difference"] == 0 for o in outputs.values())
    assert len(result["stamps"]) == 4 and "-> 4x4" in text


def test_transposed_conv_course_3x3(tmp_path):
    result, _ = run("transposed-conv", tmp_path, preset="course-3x3")
    outputs = result["outputs"]
    assert result["input"].shape == (3, 3) and result["kernel"].shape == (5, 5)
    assert outputs[(2, 1)]["size"] == 6 and outputs["same"]["size"] == 6
    full = scatter(result["input"], result["kernel"], 2)
    np.testing.assert_array_equal(outputs[(2, 1)]["output"], full[2:8, 2:8])


def test_transposed_conv_custom_geometry(tmp_path):
    result, _ = run("transposed-conv", tmp_path, input_size=3, kernel_size=4, stride=2)
    assert result["outputs"][(0, 0)]["size"] == (3 - 1) * 2 + 4
    assert result["outputs"]["same"]["size"] == 6


def test_iou_course_example(tmp_path):
    result, text = run("iou", tmp_path)
    np.testing.assert_array_equal(result["tp"], [3, 2, 3, 1])
    np.testing.assert_array_equal(result["fp"], [3, 2, 0, 2])
    np.testing.assert_array_equal(result["fn"], [1, 2, 1, 3])
    assert result["fractions"] == ["3/7", "2/6", "3/4", "1/6"]
    expected = [Fraction(3, 7), Fraction(2, 6), Fraction(3, 4), Fraction(1, 6)]
    np.testing.assert_allclose(result["iou"], [float(f) for f in expected], rtol=1e-12)
    assert round(result["mean_iou"], 3) == 0.420
    assert "= 0.420" in text


def test_iou_picture_uses_the_course_colours(tmp_path):
    from npfcn.teach import draw

    result, _ = run("iou", tmp_path)
    pixels = {tuple(p) for p in np.asarray(Image.open(result["pictures"][0]).convert("RGB"))
              .reshape(-1, 3)}
    assert {draw.CREAM, draw.ORANGE, draw.YELLOW} <= pixels


def test_fcn8s_500(tmp_path):
    result, text = run("fcn8s", tmp_path)
    shapes = {row[0]: row[1] for row in result["rows"]}
    # Caffe's FCN-8s on a 500x500 PASCAL image: fc7 16x16, upscore2 34x34, upscore8 568x568.
    assert shapes["conv1_1"] == (64, 698, 698)
    assert shapes["fc7"] == (4096, 16, 16)
    assert shapes["upscore2"] == (21, 34, 34) and shapes["upscore8"] == (21, 568, 568)
    assert shapes["score"] == (21, 500, 500)
    assert [(o[1], o[2]) for o in result["offsets"]] == [(5, 5), (9, 9), (31, 31)]
    assert result["model_shape"] == (21, 500, 500)
    fields = {row[0]: row[4] for row in result["rows"]}
    assert fields["pool5"] == 212 and fields["fc7"] == 404     # VGG16's known receptive fields
    # conv1_1's FLOPs by hand: 2 * 3 * 64 * 3 * 3 * 698 * 698
    flops = {row[0]: row[3] for row in result["rows"]}
    assert flops["conv1_1"] == 2 * 3 * 64 * 9 * 698 * 698
    assert "offset 31" in text


@pytest.mark.parametrize("size", [1, 37])
def test_fcn8s_any_size(tmp_path, size):
    result, _ = run("fcn8s", tmp_path, size=size)
    assert result["model_shape"] == (21, size, size)
    assert [(o[1], o[2]) for o in result["offsets"]] == [(5, 5), (9, 9), (31, 31)]


def test_im2col(tmp_path):
    result, _ = run("im2col", tmp_path)
    cols = result["columns"]
    assert cols.shape == (9, 4)
    np.testing.assert_array_equal(cols[:, 0], [1, 2, 3, 5, 6, 7, 9, 10, 11])   # window 0 of 1..16
    np.testing.assert_array_equal(cols[:, 3], [6, 7, 8, 10, 11, 12, 14, 15, 16])
    assert result["conv_difference"] == 0


def test_unpool(tmp_path):
    result, _ = run("unpool", tmp_path)
    np.testing.assert_array_equal(result["pooled"], [[6, 7], [8, 9]])
    np.testing.assert_array_equal(result["indices"], [[1, 6], [8, 14]])
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 2], expected[2, 0], expected[3, 2] = 6, 7, 8, 9
    np.testing.assert_array_equal(result["unpooled"], expected)


def test_upsampling(tmp_path):
    result, _ = run("upsampling", tmp_path)
    for name in ("unpooled", "bilinear", "learned"):
        assert result[name].shape == (4, 4)
    assert sorted(result["unpooled"][result["unpooled"] != 0]) == [1, 2, 3, 4]
    # Bilinear interpolation of 1 2 / 3 4 rises left to right and top to bottom inside.
    inner = result["bilinear"][1:3, 1:3]
    assert inner[0, 0] < inner[0, 1] < inner[1, 1] and inner[0, 0] < inner[1, 0]


def test_cli_every_topic(tmp_path, capsys):
    for topic in TOPICS:
        options = ["--size", "32"] if topic == "fcn8s" else []
        assert main(["explain", topic, "-o", str(tmp_path)] + options) == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "picture:" in out
    assert len(list(tmp_path.glob("*.png"))) == len(TOPICS)


@pytest.mark.parametrize("args, says", [
    (["transposed-conv", "--preset", "nope"], "unknown preset"),
    (["transposed-conv", "--input-size", "40"], "input size must be 1..6"),
    (["transposed-conv", "--stride", "0"], "stride must be 1..4"),
    (["im2col", "--input-size", "3", "--kernel-size", "4"], "kernel size must be 1..3"),
    (["fcn8s", "--size", "0"], "--size must be a positive"),
])
def test_cli_bad_options(tmp_path, capsys, args, says):
    assert main(["explain"] + args + ["-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
