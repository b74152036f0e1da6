"""A zoomed-out second look for people larger than the frame (hkd.models.inference: zoom_out)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from hkd.cli import main
from hkd.models.inference import (CANVAS_FILL, Detections, detect, detect_one, merge_zoomed,
                                  zoomed_canvas)

H, W = 200, 240
LARGE = [60.0, 10.0, 160.0, 200.0]  # 190 px tall: 0.95 of the image, cut by the bottom border
SMALL = [10.0, 100.0, 30.0, 150.0]  # 50 px


class _RangeModel(nn.Module):
    """Finds each person of the image only while their height is at most 0.6 of the input's height,
    as a detector trained on people up to that size would; boxes in the input's coordinates."""

    def __init__(self, people):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.people = people
        self.inputs = []

    def forward(self, images):
        out = []
        for image in images:
            self.inputs.append(tuple(image.shape))
            found = [(box, score) for box, score in self.people if box[3] - box[1] <= 0.6 * image.shape[1]]
            out.append({"boxes": torch.tensor([b for b, _ in found], dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor([s for _, s in found], dtype=torch.float32),
                        "labels": torch.ones(len(found), dtype=torch.int64)})
        return out


def test_the_canvas_holds_the_image_at_its_top_left_and_the_mean_elsewhere():
    image = torch.rand(3, 101, 80)
    canvas = zoomed_canvas(image, 0.5)
    assert canvas.shape == (3, 202, 160)
    assert torch.equal(canvas[:, :101, :80], image)
    for c, mean in enumerate(CANVAS_FILL):
        assert torch.allclose(canvas[c, 101:, :], torch.tensor(mean))
        assert torch.allclose(canvas[c, :, 80:], torch.tensor(mean))
    assert image.shape == (3, 101, 80), "the input is not touched"
    for bad in (0, 1, 1.5, -0.5, True):
        with pytest.raises(ValueError, match="zoom_out must be a scale in"):
            zoomed_canvas(image, bad)


def test_a_person_taller_than_the_model_sees_is_found_only_by_the_zoomed_out_look():
    model = _RangeModel([(LARGE, 0.9), (SMALL, 0.8)]).eval()
    image = np.zeros((H, W, 3), dtype=np.uint8)
    (plain,) = detect(model, [image])
    np.testing.assert_array_equal(plain.boxes, [SMALL])
    model.inputs.clear()
    (zoomed,) = detect(model, [image], zoom_out=0.5)
    assert model.inputs == [(3, H, W), (3, 2 * H, 2 * W)], "the second pass sees the canvas"
    # the large person, in the image's own coordinates; the small one once (NMS merged the passes)
    np.testing.assert_array_equal(zoomed.boxes, [LARGE, SMALL])
    np.testing.assert_allclose(zoomed.scores, [0.9, 0.8])
    # the second pass keeps only boxes at least zoom_min_height of the image: 0.95 > LARGE's share
    (strict,) = detect(model, [image], zoom_out=0.5, zoom_min_height=0.96)
    np.testing.assert_array_equal(strict.boxes, [SMALL])
    with pytest.raises(ValueError, match="zoom_out"):
        detect(model, [image], zoom_out=2.0)


def test_merging_clips_filters_by_height_and_lets_the_higher_score_win():
    base = Detections(np.array([SMALL, [50, 20, 150, 190]], dtype=np.float32), np.array([0.8, 0.4], np.float32),
                      seconds=0.1)
    zoomed = Detections(np.array([[55, 15, 155, 260], [400, 10, 500, 150], [5, 100, 25, 140]], np.float32),
                        np.array([0.95, 0.9, 0.7], np.float32), seconds=0.2)
    merged = merge_zoomed(base, zoomed, H, W)
    # the first zoomed box is clipped to the image (bottom 200) and replaces the weaker base box it
    # overlaps; the second lies on the canvas's fill only; the third is short (40 px < 0.5 × 200)
    np.testing.assert_array_equal(merged.boxes, [[55, 15, 155, 200], SMALL])
    np.testing.assert_allclose(merged.scores, [0.95, 0.8])
    assert merged.seconds == pytest.approx(0.3)
    assert len(merge_zoomed(base, zoomed, H, W, max_dets=1)) == 1
    everything = merge_zoomed(base, zoomed, H, W, min_height=0.0)
    assert [5, 100, 25, 140] in everything.boxes.tolist(), "min_height 0 keeps every box inside the image"
    with pytest.raises(ValueError, match="zoom_min_height"):
        merge_zoomed(base, zoomed, H, W, min_height=1.5)
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert len(merge_zoomed(empty, empty, H, W)) == 0


def test_the_options_compose_in_order_merge_then_suppress():
    torso = [80.0, 40.0, 140.0, 110.0]  # inside LARGE, found by the first pass
    model = _RangeModel([(LARGE, 0.9), (torso, 0.6)]).eval()

    def run(t):
        return model([t])[0]

    tensor = torch.zeros(3, H, W)
    merged = detect_one(run, tensor, zoom_out=0.5)
    assert len(merged) == 2, "the torso's IoU with the full box is under the NMS threshold"
    one = detect_one(run, tensor, zoom_out=0.5, suppress_contained=0.9)
    np.testing.assert_array_equal(one.boxes, [LARGE])


def test_predict_zoom_out_option(predict_world, tmp_path, capsys):
    model, images, common = predict_world.model, predict_world.images, predict_world.common
    assert main([*common, "--out", str(tmp_path / "zoom.json"), "--zoom-out", "0.5",
                 "--zoom-min-height", "0.0"]) == 0
    assert "with a zoomed-out second look at --zoom-out 0.5" in capsys.readouterr().out
    written = json.loads((tmp_path / "zoom.json").read_text())
    from hkd.data.images import load_image

    for image_id, name in enumerate(("a.png", "b.png"), start=1):  # what detect() gives, image by image
        (dets,) = detect(model, [load_image(images / name)], score_thresh=0.0, zoom_out=0.5, zoom_min_height=0.0)
        rows = [d for d in written if d["image_id"] == image_id]
        assert len(rows) == len(dets) > 0
        np.testing.assert_allclose([d["bbox"] for d in rows], [d["bbox"] for d in dets.to_coco(image_id)], atol=0.02)
        np.testing.assert_allclose([d["score"] for d in rows], dets.scores, atol=1e-4)
    for bad in ("0", "1", "1.5", "nan"):
        assert main([*common, "--out", str(tmp_path / "x.json"), "--zoom-out", bad]) == 2
        assert "--zoom-out must be a scale in (0, 1)" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "x.json"), "--zoom-min-height", "0.5"]) == 2
    assert "--zoom-min-height goes with --zoom-out" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "x.json"), "--zoom-out", "0.5", "--zoom-min-height", "2"]) == 2
    assert "--zoom-min-height must be a share of the image height" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
