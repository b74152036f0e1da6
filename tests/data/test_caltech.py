"""Issue #33: Caltech Pedestrian read as distributed, .seq videos and .vbb annotations, frames
decoded on the fly. The files are written here as Norpix and Dollár's vbb tool write them."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from hkd.data.caltech import CaltechDataset, VbbObject, is_caltech_root, read_vbb
from hkd.data.datasets import DatasetError, open_dataset
from hkd.data.seq import open_seq

W, H = 64, 48  # frame size, pixels
N_FRAMES = 4
_FIELDS = ("id", "pos", "posv", "occl", "lock", "str", "end")


def _pixels(frame: int) -> np.ndarray:
    """A smooth RGB frame (JPEG keeps it within a few levels), distinct per frame."""
    ramp = np.linspace(0, 60, W)[None, :, None]
    base = np.array([30 + 50 * frame, 200 - 40 * frame, 90 + 30 * frame], float)[None, None, :]
    return np.clip(base + ramp + np.zeros((H, 1, 1)), 0, 255).astype(np.uint8)


def _write_seq(path: Path, frames: list[np.ndarray], *, padding: bool = False,
               frame_count: int | None = None) -> Path:
    """A Norpix .seq with JPEG frames: 1024-byte header, then size | JPEG | timestamp [| 8 empty bytes]."""
    header = bytearray(1024)
    struct.pack_into("<I", header, 0, 0xFEED)
    header[4:24] = "Norpix seq".encode("utf-16-le")
    struct.pack_into("<iI", header, 28, 5, 1024)
    struct.pack_into("<6I", header, 548, W, H, 8, 8, W * H * 3, 102)
    struct.pack_into("<I", header, 572, len(frames) if frame_count is None else frame_count)
    struct.pack_into("<I", header, 580, W * H * 3)
    struct.pack_into("<d", header, 584, 30.0)
    body = bytearray()
    for i, pixels in enumerate(frames):
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        body += struct.pack("<I", len(jpeg) + 4) + jpeg.tobytes() + struct.pack("<IHH", 1_200_000_000 + i, 33 * i, 0)
        body += bytes(8) if padding else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(header) + bytes(body))
    return path


def _struct_array(objects: list[dict]) -> np.ndarray:
    """A 1×k MATLAB struct array, as vbb stores a frame's objects."""
    array = np.zeros((1, len(objects)), dtype=[(name, object) for name in _FIELDS])
    for j, obj in enumerate(objects):
        full = {"posv": [0, 0, 0, 0], "occl": 0, "lock": 0, "str": 0, "end": N_FRAMES - 1, **obj}
        for name in _FIELDS:
            array[0, j][name] = np.asarray(full[name], np.float64).reshape(1, -1)
    return array


def _write_vbb(path: Path, frames: list[list[dict]], labels: list[str], *, n_frame: int | None = None) -> Path:
    """A .vbb: MATLAB struct A with nFrame, objLists (1×n cell of struct arrays or []), objLbl, …"""
    obj_lists = np.empty((1, len(frames)), dtype=object)
    for i, objects in enumerate(frames):
        obj_lists[0, i] = _struct_array(objects) if objects else np.zeros((0, 0))
    obj_lbl = np.empty((1, len(labels)), dtype=object)
    obj_lbl[0, :] = labels
    ends = np.full((1, len(labels)), len(frames) - 1.0)
    annotation = {
        "nFrame": float(len(frames) if n_frame is None else n_frame), "maxObj": float(len(labels)),
        "objInit": np.ones((1, len(labels))), "objLbl": obj_lbl, "objStr": np.zeros((1, len(labels))),
        "objEnd": ends, "objHide": np.zeros((1, len(labels))), "altered": 0.0,
        "log": np.zeros((1, 0)), "logLen": 0.0, "objLists": obj_lists,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"A": annotation})
    return path


# Track ids count from 1 and index objLbl.
LABELS = ["person", "person", "people", "person?", "person", "person-fa"]
ANNOTATED = [
    [],
    [{"id": 1, "pos": [10, 5, 12, 30]}],  # one object: MATLAB's 1×1 struct array
    [
        {"id": 2, "pos": [4, 8, 10, 20], "posv": [4, 8, 10, 10], "occl": 1},  # half visible
        {"id": 3, "pos": [30, 10, 20, 15]},  # people: an ignore region
        {"id": 4, "pos": [50, 0, 5, 10]},  # person?: an ignore region (left out as dbEval does)
    ],
    [
        {"id": 5, "pos": [40, 10, 30, 40], "posv": [40, 10, 30, 40], "occl": 1},  # fully occluded, outside
        {"id": 6, "pos": [1, 1, 5, 5]},  # person-fa: an ignore region (left out as dbEval does)
    ],
]


def _caltech(root: Path, videos: list[tuple[str, str]], *, under_videos: bool = False) -> Path:
    """Write each (set, video) with :data:`ANNOTATED` and :func:`_pixels` frames."""
    for set_name, video in videos:
        folder = root / "videos" / set_name if under_videos else root / set_name
        _write_seq(folder / f"{video}.seq", [_pixels(i) for i in range(N_FRAMES)])
        _write_vbb(root / "annotations" / set_name / f"{video}.vbb", ANNOTATED, LABELS)
    return root


# --------------------------------------------------------------------------- .seq


@pytest.mark.parametrize("padding", [False, True], ids=["packed", "padded"])
def test_seq_frames_decode_to_the_written_pixels(tmp_path, padding):
    frames = [_pixels(i) for i in range(N_FRAMES)]
    video = open_seq(_write_seq(tmp_path / "V000.seq", frames, padding=padding))
    assert len(video) == N_FRAMES
    assert (video.header.width, video.header.height, video.header.image_format) == (W, H, 102)
    for i, original in enumerate(frames):
        decoded = video.frame(i)
        assert decoded.dtype == np.uint8 and decoded.shape == (H, W, 3)
        errors = [np.abs(decoded.astype(int) - other.astype(int)).mean() for other in frames]
        assert errors[i] < 3 and int(np.argmin(errors)) == i  # RGB order, and the right frame


def test_seq_frame_count_zero_means_all_frames_in_the_file(tmp_path):
    video = open_seq(_write_seq(tmp_path / "V000.seq", [_pixels(i) for i in range(3)], frame_count=0))
    assert len(video) == 3


def test_seq_index_is_built_once_per_file(tmp_path):
    path = _write_seq(tmp_path / "V000.seq", [_pixels(0)])
    assert open_seq(path) is open_seq(path)


@pytest.mark.parametrize("cut, message", [
    (100, r"frame 3 is truncated"),  # inside the last JPEG
    ("before last", r"truncated at frame 3"),  # the file ends where frame 3 should start
])
def test_a_truncated_seq_is_refused_naming_file_and_frame(tmp_path, cut, message):
    path = _write_seq(tmp_path / "V000.seq", [_pixels(i) for i in range(N_FRAMES)])
    data = path.read_bytes()
    if cut == "before last":
        cut = len(data) - open_seq(path).offsets[3] + 4
    path.write_bytes(data[:-cut])
    with pytest.raises(DatasetError, match=message) as err:
        open_seq(path)
    assert "V000.seq" in str(err.value)


def test_a_seq_with_fewer_frames_than_its_header_says_is_refused(tmp_path):
    path = _write_seq(tmp_path / "V000.seq", [_pixels(i) for i in range(2)], frame_count=3)
    with pytest.raises(DatasetError, match=r"V000.seq' is truncated at frame 2 .*says 3 frames"):
        open_seq(path)


def test_a_file_without_the_norpix_magic_is_refused(tmp_path):
    path = _write_seq(tmp_path / "V000.seq", [_pixels(0)])
    path.write_bytes(b"\x00\x00\x00\x00" + path.read_bytes()[4:])
    with pytest.raises(DatasetError, match=r"V000.seq' is not a Norpix .seq video.*0xFEED"):
        open_seq(path)


# --------------------------------------------------------------------------- .vbb


def test_the_vbb_fixture_loads_like_a_real_vbb(tmp_path):
    """Squeezed, as the usual converters load Caltech: one object is a bare struct, several an array."""
    path = _write_vbb(tmp_path / "V000.vbb", ANNOTATED, LABELS)
    annotation = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["A"]
    assert annotation.nFrame == N_FRAMES and list(annotation.objLbl) == LABELS
    assert annotation.objLists[0].size == 0
    assert isinstance(annotation.objLists[1], scipy.io.matlab.mat_struct)
    assert annotation.objLists[1].pos.tolist() == [10, 5, 12, 30]
    assert [obj.id for obj in annotation.objLists[2]] == [2, 3, 4]


def test_read_vbb_gives_each_frames_objects(tmp_path):
    frames = read_vbb(_write_vbb(tmp_path / "V000.vbb", ANNOTATED, LABELS))
    assert [len(objects) for objects in frames] == [0, 1, 3, 2]
    assert frames[1] == [VbbObject("person", (10, 5, 12, 30), (0, 0, 0, 0), False)]
    assert [obj.label for obj in frames[2]] == ["person", "people", "person?"]
    assert frames[2][0].posv == (4, 8, 10, 10) and frames[2][0].occluded


@pytest.mark.parametrize("occluded, posv, expected", [
    (False, (4, 8, 10, 10), 1.0),  # not occluded: the visible box is not used
    (True, (0, 0, 0, 0), 1.0),  # occluded without a visible box
    (True, (4, 8, 10, 10), 0.5),
    (True, (4, 8, 10, 20), 0.0),  # visible box = full box marks full occlusion (bbGt)
])
def test_visibility_follows_bbgt(occluded, posv, expected):
    assert VbbObject("person", (4, 8, 10, 20), posv, occluded).vis_ratio == expected


def test_a_vbb_that_is_not_a_matlab_file_is_refused(tmp_path):
    path = tmp_path / "V000.vbb"
    path.write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match=r"V000.vbb' is not a readable .vbb"):
        read_vbb(path)


# --------------------------------------------------------------------------- dataset


def test_caltech_boxes_ignore_regions_heights_and_visibility(tmp_path):
    root = _caltech(tmp_path / "caltech", [("set06", "V000")])
    dataset = CaltechDataset(root, step=1)
    assert dataset.file_names == [f"set06/V000/I{i:05d}.jpg" for i in range(N_FRAMES)]
    assert dataset.image_ids == [1, 2, 3, 4]
    assert [len(dataset.annotations(i).boxes) for i in range(N_FRAMES)] == [0, 1, 3, 2]
    one, two, three = (dataset.annotations(i) for i in (1, 2, 3))
    assert one.boxes.tolist() == [[10, 5, 22, 35]] and one.vis_ratio.tolist() == [1.0]
    assert two.boxes.tolist() == [[4, 8, 14, 28], [30, 10, 50, 25], [50, 0, 55, 10]]
    assert two.ignore.tolist() == [False, True, True]  # people and person? are ignore regions
    assert two.heights.tolist() == [20, 15, 10] and two.vis_ratio.tolist() == [0.5, 1.0, 1.0]
    # Clipped to the 64×48 frame; the height stays the annotated one.
    assert three.boxes.tolist() == [[40, 10, 64, 48], [1, 1, 6, 6]] and three.heights.tolist() == [40, 5]
    assert three.ignore.tolist() == [False, True]  # person-fa too
    assert three.vis_ratio.tolist() == [0.0, 1.0]
    assert (three.width, three.height) == (W, H) and three.path == root / "set06" / "V000.seq"


def test_caltech_with_the_toolbox_labels_leaves_person_uncertain_and_fa_out(tmp_path):
    from hkd.data.caltech import TOOLBOX_IGNORE_LABELS

    root = _caltech(tmp_path / "caltech", [("set06", "V000")])
    dataset = CaltechDataset(root, step=1, ignore_labels=TOOLBOX_IGNORE_LABELS)
    assert [len(dataset.annotations(i).boxes) for i in range(N_FRAMES)] == [0, 1, 2, 1]
    assert dataset.annotations(2).ignore.tolist() == [False, True]


def test_caltech_frames_are_decoded_from_the_video(tmp_path):
    dataset = CaltechDataset(_caltech(tmp_path, [("set06", "V000")]), step=2)
    assert dataset.file_names == ["set06/V000/I00001.jpg", "set06/V000/I00003.jpg"]
    pixels = dataset.load_pixels(1)
    assert pixels.dtype == np.uint8 and pixels.shape == (H, W, 3)
    assert np.abs(pixels.astype(int) - _pixels(3).astype(int)).mean() < 3
    image, target = dataset[1]
    assert tuple(image.shape) == (3, H, W) and image.dtype.is_floating_point
    assert np.allclose(image.permute(1, 2, 0).numpy() * 255, pixels, atol=0.5)
    assert target["file_name"] == "set06/V000/I00003.jpg" and target["boxes"].shape == (2, 4)  # a person, a person-fa
    video, frame = dataset.video_frame(1)
    assert video.path == tmp_path / "set06" / "V000.seq" and frame == 3
    assert dataset.image_file(1) is None  # a frame is no file of its own


def test_caltech_transforms_are_applied(tmp_path):
    def flip(image, target):
        return image.flip(-1), {**target, "flipped": True}

    dataset = CaltechDataset(_caltech(tmp_path, [("set06", "V000")]), step=2, transforms=flip)
    assert dataset[0][1]["flipped"]


@pytest.mark.parametrize("step, frames", [(1, [0, 1, 2, 3]), (2, [1, 3]), (3, [2]), (4, [3])])
def test_step_picks_the_frames_where_i_plus_1_is_a_multiple(tmp_path, step, frames):
    dataset = CaltechDataset(_caltech(tmp_path, [("set07", "V001")]), step=step)
    assert dataset.file_names == [f"set07/V001/I{i:05d}.jpg" for i in frames]


def test_step_30_is_the_default(tmp_path):
    with pytest.raises(DatasetError, match=r"no frame i with \(i \+ 1\) % 30 == 0"):
        CaltechDataset(_caltech(tmp_path, [("set06", "V000")]))


def test_train_and_test_splits_read_their_own_sets(tmp_path, caplog):
    root = _caltech(tmp_path, [("set00", "V000"), ("set05", "V001"), ("set06", "V000"), ("set10", "V002")])
    with caplog.at_level(logging.WARNING):
        train = CaltechDataset(root, split="train", step=4)
    assert train.file_names == ["set00/V000/I00003.jpg", "set05/V001/I00003.jpg"]
    assert "set01" in caplog.text  # absent sets of the split are named
    test = CaltechDataset(root, split="test", step=4)
    assert test.file_names == ["set06/V000/I00003.jpg", "set10/V002/I00003.jpg"]
    assert CaltechDataset(root, sets=[10, "set00"], step=4).file_names == [
        "set10/V002/I00003.jpg", "set00/V000/I00003.jpg"]


def test_open_dataset_recognises_caltech_and_takes_every_30th_frame(tmp_path):
    _write_seq(tmp_path / "set06" / "V000.seq", [_pixels(i % N_FRAMES) for i in range(61)])
    _write_vbb(tmp_path / "annotations" / "set06" / "V000.vbb", ANNOTATED + [[]] * 57, LABELS)
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, CaltechDataset) and dataset.format_name == "caltech"
    assert dataset.file_names == ["set06/V000/I00029.jpg", "set06/V000/I00059.jpg"]


def test_videos_in_a_videos_folder_are_found(tmp_path):
    root = _caltech(tmp_path, [("set06", "V000")], under_videos=True)
    assert is_caltech_root(root)
    dataset = CaltechDataset(root, step=4)
    assert dataset.image_path(0) == root / "videos" / "set06" / "V000.seq"


def test_is_caltech_root(tmp_path):
    assert is_caltech_root(_caltech(tmp_path / "a", [("set06", "V000")]))
    assert not is_caltech_root(tmp_path / "missing")
    _write_vbb(tmp_path / "b" / "annotations" / "set06" / "V000.vbb", ANNOTATED, LABELS)
    assert not is_caltech_root(tmp_path / "b")  # annotations without videos
    _write_seq(tmp_path / "c" / "set06" / "V000.seq", [_pixels(0)])
    assert not is_caltech_root(tmp_path / "c")  # videos without annotations


def test_a_vbb_with_another_frame_count_is_refused_naming_both_files(tmp_path):
    root = _caltech(tmp_path, [("set06", "V000")])
    _write_vbb(root / "annotations" / "set06" / "V000.vbb", ANNOTATED + [[]], LABELS)
    with pytest.raises(DatasetError, match=r"V000.vbb' annotates 5 frames but '.*set06/V000.seq' holds 4"):
        CaltechDataset(root, step=1)


def test_a_vbb_whose_nframe_disagrees_with_its_objlists_is_refused(tmp_path):
    path = _write_vbb(tmp_path / "V000.vbb", ANNOTATED, LABELS, n_frame=5)
    with pytest.raises(DatasetError, match=r"V000.vbb'.*objLists has 4 frames, nFrame says 5"):
        read_vbb(path)


def test_a_video_without_annotations_is_refused(tmp_path):
    root = _caltech(tmp_path, [("set06", "V000")])
    _write_seq(root / "set06" / "V001.seq", [_pixels(0)])
    with pytest.raises(DatasetError, match=r"V001.seq' has no annotations: expected '.*annotations/set06/V001.vbb'"):
        CaltechDataset(root, step=1)


def test_annotations_without_a_video_are_refused(tmp_path):
    root = _caltech(tmp_path, [("set06", "V000")])
    _write_vbb(root / "annotations" / "set06" / "V001.vbb", ANNOTATED, LABELS)
    with pytest.raises(DatasetError, match=r"V001.vbb' has no video"):
        CaltechDataset(root, step=1)


def test_a_truncated_video_in_the_dataset_is_refused(tmp_path):
    root = _caltech(tmp_path, [("set06", "V000")])
    seq = root / "set06" / "V000.seq"
    seq.write_bytes(seq.read_bytes()[:-50])
    with pytest.raises(DatasetError, match=r"V000.seq', frame 3 is truncated"):
        CaltechDataset(root, step=1)


def test_missing_sets_and_bad_arguments_are_refused(tmp_path):
    root = _caltech(tmp_path, [("set06", "V000")])
    with pytest.raises(DatasetError, match=r"none of the train sets"):
        CaltechDataset(root, split="train")
    with pytest.raises(DatasetError, match=r"set\(s\) \['set07'\] are not in"):
        CaltechDataset(root, sets=[6, 7])
    with pytest.raises(DatasetError, match=r"split 'val' is not one of \['test', 'train'\]"):
        CaltechDataset(root, split="val")
    with pytest.raises(DatasetError, match=r"step must be a positive"):
        CaltechDataset(root, step=0)
    with pytest.raises(DatasetError, match=r"'seta' is not a set"):
        CaltechDataset(root, sets=["seta"])
    with pytest.raises(DatasetError, match=r"Caltech folder .* does not exist"):
        CaltechDataset(tmp_path / "nowhere")


def test_a_video_symlinked_out_of_the_dataset_is_refused(tmp_path):
    outside = _write_seq(tmp_path / "elsewhere" / "V000.seq", [_pixels(i) for i in range(N_FRAMES)])
    root = tmp_path / "caltech"
    _write_vbb(root / "annotations" / "set06" / "V000.vbb", ANNOTATED, LABELS)
    (root / "set06").mkdir(parents=True)
    (root / "set06" / "V000.seq").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"resolves to .*elsewhere/V000.seq.*outside"):
        CaltechDataset(root, step=1)
