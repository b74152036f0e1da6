"""The evaluation workflow (``hkd compare --data``, the Evaluate page) on datasets as they are
distributed: each GT ``file_name`` is a file below the images folder the workflow names, and
Caltech's frames are written once from the videos into the result store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hkd.data.datasets import is_annotated, open_dataset
from hkd.data.images import load_image
from hkd.evaluation import EvaluationError
from hkd.evaluation.workflow import ground_truth, images_folder
from hkd.results import ResultStore
from tests.data.test_caltech import _pixels, _write_seq, _write_vbb
from tests.data.test_formats_official import write_citypersons, write_coco


def _every_gt_image_is_below(gt, folder: Path) -> None:
    assert gt.images_dir == folder
    for image in gt.gt["images"]:
        path = folder / image["file_name"]
        assert path.is_file(), path
        assert load_image(path).shape[:2] == (image["height"], image["width"])


def test_coco_root_and_citypersons_mat_are_evaluated_where_their_images_are(tmp_path):
    store = ResultStore(tmp_path / "cache")
    coco = tmp_path / "coco"
    write_coco(coco)
    gt = ground_truth(coco, store=store)
    _every_gt_image_is_below(gt, coco / "val2017")
    assert len(gt.gt["images"]) == 2

    mat = write_citypersons(tmp_path / "cityscapes")
    gt = ground_truth(mat, limit=2, store=store)
    _every_gt_image_is_below(gt, tmp_path / "cityscapes" / "leftImg8bit" / "val")
    assert gt.num_images == 2 and not (store.root / "frames").exists()  # file images: nothing copied


def _caltech_60(root: Path) -> Path:
    """set06/V000: 60 frames, people annotated on frames 29 and 59 (the two every-30th frames)."""
    frames = [_pixels(i % 4) for i in range(60)]
    annotated = [[] for _ in range(60)]
    annotated[29] = [{"id": 1, "pos": [10, 5, 12, 40]}]
    annotated[59] = [{"id": 1, "pos": [20, 5, 12, 40]}, {"id": 2, "pos": [40, 2, 20, 30]}]
    _write_seq(root / "set06" / "V000.seq", frames)
    _write_vbb(root / "annotations" / "set06" / "V000.vbb", annotated, ["person", "people"])
    return root


def test_caltech_frames_are_written_once_as_the_videos_jpegs(tmp_path, monkeypatch):
    from hkd.data import caltech

    store = ResultStore(tmp_path / "cache")
    root = _caltech_60(tmp_path / "caltech")
    assert is_annotated(root) and not is_annotated(tmp_path / "cache")
    gt = ground_truth(root, store=store)
    assert [im["file_name"] for im in gt.gt["images"]] == ["set06/V000/I00029.jpg", "set06/V000/I00059.jpg"]
    assert gt.images_dir.is_relative_to(store.root / "frames")
    _every_gt_image_is_below(gt, gt.images_dir)
    dataset = open_dataset(root)
    for index, image in enumerate(gt.gt["images"]):  # the video's own JPEG bytes, decoded as the reader does
        video, frame = dataset.video_frame(index)
        assert (gt.images_dir / image["file_name"]).read_bytes() == video.frame_bytes(frame)
        np.testing.assert_array_equal(load_image(gt.images_dir / image["file_name"]), dataset.load_pixels(index))
    counted = [a for a in gt.gt["annotations"] if not a["ignore"]]
    assert len(counted) == 2 and len(gt.gt["annotations"]) == 3  # two people, one `people` ignore region

    monkeypatch.setattr(caltech.CaltechDataset, "video_frame",
                        lambda *a: pytest.fail("frames written again"))
    assert images_folder(root, store.root) == gt.images_dir  # a later run finds them


def test_a_folder_of_images_has_no_ground_truth_to_evaluate(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(EvaluationError, match="without annotations.json"):
        ground_truth(tmp_path / "photos", store=ResultStore(tmp_path / "cache"))


def test_a_dataset_as_distributed_is_read_once_for_its_ground_truth_and_images(tmp_path, monkeypatch):
    """Caltech's .vbb files (and a COCO or CityPersons annotation file) are parsed once per
    evaluation, not once for the GT and again for the images folder."""
    import hkd.data.datasets as datasets

    opens = []
    real_open = datasets.open_dataset
    monkeypatch.setattr(datasets, "open_dataset", lambda path, **kw: opens.append(str(path)) or real_open(path, **kw))
    root = _caltech_60(tmp_path / "caltech")
    store = ResultStore(tmp_path / "cache")
    gt = ground_truth(root, store=store)
    assert opens == [str(root.resolve())] and gt.num_images == 2
    coco = tmp_path / "coco"
    write_coco(coco)
    opens.clear()
    ground_truth(coco, store=store)
    assert len(opens) == 1

