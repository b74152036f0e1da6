"""ONNX export and the onnxruntime backend: the same detections as PyTorch, metadata, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hkd.data.images import load_image
from hkd.deploy.agreement import Agreement, backend_agreement, check_backends
from hkd.deploy.export import OnnxCheckError, OnnxExportError, export_onnx, sample_images
from hkd.deploy.runtime import OnnxDetector, OnnxInputError, OnnxModelError, read_onnx_meta
from hkd.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hkd.models.inference import Detections, detect
from hkd.models.presets import build_detector

STUDENT = "hkd_frcnn_lite0.student"
TINY = dict(min_size=96, max_size=128)
ASSETS = Path(__file__).resolve().parents[2] / "assets" / "samples"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random-init student checkpoint and its two exports (dynamic and fixed 128x96)."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    meta = CheckpointMeta(preset=STUDENT, metrics={"mr": {"Reasonable": 42.5}}, train_config={"steps": 3},
                          parent="teacher.safetensors", notes="tiny for tests", **TINY)
    ckpt = save_checkpoint(root / "student.safetensors", build_detector(STUDENT, **TINY).eval(), meta)
    dynamic = export_onnx(ckpt, root / "student.onnx")
    fixed = export_onnx(ckpt, root / "student_128x96.onnx", size=(128, 96), opset=16)
    return {"root": root, "ckpt": ckpt, "dynamic": dynamic, "fixed": fixed}


def _dets(boxes, scores) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32))


@pytest.mark.slow
def test_metadata_round_trip(tiny):
    meta, export = read_onnx_meta(tiny["dynamic"].path)
    original = load_checkpoint(tiny["ckpt"]).meta
    assert meta == original  # preset, classes, input size, training provenance, metrics: all of it
    assert export["opset"] == 17 and export["input"]["dynamic"] is True
    assert export["source"] == {"file": "student.safetensors", "sha256": load_checkpoint(tiny["ckpt"]).sha256}
    assert export["check"]["ok"] is True and export["check"]["matched"] > 0
    assert export["check"]["max_box_diff_px"] <= 1.0 and export["check"]["max_score_diff"] <= 1e-3
    _, fixed = read_onnx_meta(tiny["fixed"].path)
    assert fixed["opset"] == 16 and fixed["input"]["shape"] == [3, 96, 128] and fixed["input"]["dynamic"] is False


def test_onnxruntime_matches_pytorch_on_images_not_used_by_the_check(tiny):
    model = load_checkpoint(tiny["ckpt"], inference=True).model
    detector = OnnxDetector(tiny["dynamic"].path, threads=1)
    assert detector.input_size is None and detector.providers[-1] == "CPUExecutionProvider"
    real = sorted((ASSETS / "real").glob("*.jpg"))
    synth = sorted((ASSETS / "synthped" / "images").glob("*.jpg"))[:2]
    assert real and synth, "the shipped samples are part of the repository"
    images = [load_image(p) for p in real + synth]
    rng = np.random.default_rng(3)
    images.append(rng.integers(0, 255, (150, 90, 3), dtype=np.uint8))  # portrait, odd size
    agreement, reference, candidate = check_backends(model, detector, images)
    assert agreement.ok, agreement.summary()
    assert agreement.matched >= 0.98 * agreement.reference > 0
    for ref, cand in zip(reference, candidate):
        assert isinstance(cand, Detections)
        assert cand.seconds > 0
        assert (cand.boxes[:, 2:] >= cand.boxes[:, :2]).all()
        assert np.all(np.diff(cand.scores) <= 0), "sorted by score, as the PyTorch path"
    # the torchvision eval contract, so detect() and cpu_latency() run it unchanged
    (pred,) = detector([torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255])
    assert set(pred) == {"boxes", "scores", "labels"} and pred["labels"].dtype == torch.int64


def test_both_backends_take_the_zoomed_out_second_look_alike(tiny):
    from hkd.deploy.agreement import backend_agreement
    from hkd.models.inference import detect

    model = load_checkpoint(tiny["ckpt"], inference=True).model
    detector = OnnxDetector(tiny["dynamic"].path, threads=1)
    images = [load_image(p) for p in sorted((ASSETS / "real").glob("*.jpg"))[:2]]
    options = {"score_thresh": 0.05, "zoom_out": 0.5, "zoom_min_height": 0.0, "suppress_contained": 0.9}
    reference = [detect(model, [im], **options)[0] for im in images]
    candidate = [detector.detect([im], **options)[0] for im in images]
    agreement = backend_agreement(reference, candidate, score_thresh=0.05, max_dets=100)
    assert agreement.ok and agreement.reference > 0, agreement.summary()
    plain = [detector.detect([im], score_thresh=0.05)[0] for im in images]
    assert [len(d) for d in plain] != [len(d) for d in candidate] or any(
        not np.array_equal(a.boxes, b.boxes) for a, b in zip(plain, candidate)), "the options change the boxes"
    with pytest.raises(ValueError, match="zoom_out"):
        detector.detect(images[:1], zoom_out=1.0)


@pytest.mark.slow
def test_mr_equal_on_the_shipped_synthped_samples(tiny):
    from hkd.train.evaluate import evaluate_detections

    gt = json.loads((ASSETS / "synthped" / "annotations.json").read_text())
    model = load_checkpoint(tiny["ckpt"], inference=True).model
    detector = OnnxDetector(tiny["dynamic"].path, threads=1)
    results = {"pytorch": [], "onnxruntime": []}
    for im in gt["images"]:
        image = load_image(ASSETS / "synthped" / "images" / im["file_name"])
        (a,) = detect(model, [image])
        (b,) = detector.detect([image])
        results["pytorch"] += a.to_coco(im["id"])
        results["onnxruntime"] += b.to_coco(im["id"])
    assert len(results["onnxruntime"]) > 0
    mr_pt = evaluate_detections(gt, results["pytorch"])["mr"]
    mr_ort = evaluate_detections(gt, results["onnxruntime"])["mr"]
    for setup in ("Reasonable", "Small", "Heavy", "All"):
        assert abs(mr_pt[setup] - mr_ort[setup]) <= 0.1, (setup, mr_pt, mr_ort)


def test_fixed_size_export_refuses_other_sizes(tiny):
    detector = OnnxDetector(tiny["fixed"].path)
    assert detector.input_size == (128, 96)
    (dets,) = detector.detect([sample_images((128, 96), tiny["fixed"].meta)[0]])
    assert isinstance(dets, Detections)
    with pytest.raises(OnnxInputError, match=r"student_128x96.onnx was exported for 128x96 images only.*160x120"):
        detector.detect([np.zeros((120, 160, 3), np.uint8)])


def test_detector_is_inference_only(tiny):
    detector = OnnxDetector(tiny["dynamic"].path)
    assert detector.eval() is detector and detector.train(False) is detector
    with pytest.raises(RuntimeError, match="inference only"):
        detector.train()
    with pytest.raises(OnnxInputError, match=r"shape \(3, H, W\)"):
        detector([torch.zeros(1, 3, 32, 32)])


@pytest.mark.slow
def test_mismatch_is_reported_and_nothing_is_written(tiny, monkeypatch):
    real_call = OnnxDetector.__call__

    def shifted(self, images):  # a backend that drifts by 2 px
        preds = real_call(self, images)
        for pred in preds:
            pred["boxes"] = pred["boxes"] + 2.0
        return preds

    monkeypatch.setattr(OnnxDetector, "__call__", shifted)
    out = tiny["root"] / "drifted.onnx"
    with pytest.raises(OnnxCheckError, match=r"does not reproduce PyTorch.*MISMATCH.*max box difference 2\.0") as err:
        export_onnx(tiny["ckpt"], out)
    assert not err.value.agreement.ok and err.value.agreement.max_box_diff_px == pytest.approx(2.0, abs=1e-3)
    assert not out.exists() and not list(tiny["root"].glob(".drifted.onnx.*"))


def test_foreign_onnx_and_broken_files_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(OnnxModelError, match=r"foreign.onnx: ONNX model without HKD metadata.*hkd export"):
        OnnxDetector(foreign)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(OnnxModelError, match=r"broken.onnx: not a readable ONNX model"):
        read_onnx_meta(broken)
    with pytest.raises(OnnxModelError, match=r"missing.onnx: no such ONNX file"):
        OnnxDetector(tmp_path / "missing.onnx")


def test_unexportable_checkpoints_are_refused_clearly(tmp_path, tiny):
    from safetensors.torch import save_file

    # a single-stage preset: refused from the header, before any weights load
    retina = tmp_path / "retina.safetensors"
    save_file({"w": torch.zeros(1)}, str(retina),
              metadata={"hkd": CheckpointMeta(preset="retinanet_resnet50_fpn.coco_person").to_json()})
    with pytest.raises(OnnxExportError, match=r"retina.safetensors: preset 'retinanet_resnet50_fpn.coco_person' "
                                              r"\(single-stage detector\) cannot be exported.*hkd_frcnn_lite0.student"):
        export_onnx(retina, tmp_path / "r.onnx")
    unknown = tmp_path / "unknown.safetensors"
    save_file({"w": torch.zeros(1)}, str(unknown), metadata={"hkd": CheckpointMeta(preset="yolo.v99").to_json()})
    with pytest.raises(ValueError, match=r"unknown.safetensors: unknown preset 'yolo.v99'; available"):
        export_onnx(unknown, tmp_path / "u.onnx")
    with pytest.raises(OnnxExportError, match="opset 9 is not supported; choose one from 11 to 20"):
        export_onnx(tiny["ckpt"], tmp_path / "o.onnx", opset=9)
    with pytest.raises(OnnxExportError, match=r"must end in \.onnx"):
        export_onnx(tiny["ckpt"], tmp_path / "model.bin")
    with pytest.raises(OnnxExportError, match="between 32 and 8192"):
        export_onnx(tiny["ckpt"], tmp_path / "s.onnx", size=(10, 96))


def test_backend_agreement_tolerances_and_borderline():
    ref = [_dets([[0, 0, 10, 20], [30, 30, 40, 60]], [0.9, 0.4])]
    same = backend_agreement(ref, [_dets([[0.5, 0, 10, 20.5], [30, 30, 40, 60]], [0.9004, 0.4])])
    assert same.ok and same.matched == 2 and same.max_box_diff_px == pytest.approx(0.5)
    assert same.max_score_diff == pytest.approx(4e-4, abs=1e-6)
    moved = backend_agreement(ref, [_dets([[1.5, 0, 10, 20], [30, 30, 40, 60]], [0.9, 0.4])])
    assert not moved.ok and moved.summary().startswith("MISMATCH")
    rescored = backend_agreement(ref, [_dets([[0, 0, 10, 20], [30, 30, 40, 60]], [0.9, 0.402])])
    assert not rescored.ok
    # a box just above the threshold on one side only: borderline, not a difference
    edge = backend_agreement([_dets([[0, 0, 10, 20], [50, 50, 60, 80]], [0.9, 0.0505])],
                              [_dets([[0, 0, 10, 20]], [0.9])])
    assert edge.ok and edge.borderline == 1 and edge.matched == 1
    # a confident box on one side only is a real difference, named in the report
    missing = backend_agreement(ref, [_dets([[0, 0, 10, 20]], [0.9])])
    assert not missing.ok and missing.unmatched == [{"image": 0, "side": "pytorch", "score": pytest.approx(0.4),
                                                     "box": [30.0, 30.0, 40.0, 60.0]}]
    assert "found by one backend only" in missing.summary()
    with pytest.raises(ValueError, match="1 reference images but 2 candidate"):
        backend_agreement(ref, ref * 2)
    assert isinstance(Agreement().to_dict()["ok"], bool)


@pytest.mark.slow
def test_int8_quantises_the_backbone_and_keeps_the_metadata(tiny):
    import onnx

    from hkd.deploy.quantize import quantize_int8

    calibration = sample_images(None, tiny["dynamic"].meta)
    out = quantize_int8(tiny["dynamic"].path, tiny["root"] / "student.int8.onnx", calibration)
    graph = onnx.load(str(out)).graph
    backbone_ops = {n.op_type for n in graph.node if n.name.startswith("/detector/backbone/")}
    assert "QLinearConv" in backbone_ops and "Conv" not in backbone_ops
    assert any(n.op_type == "Gemm" for n in graph.node), "the box head stays float"
    meta, export = read_onnx_meta(out)
    assert meta == tiny["dynamic"].meta and "check" not in export
    assert export["quantization"]["calibration"] == "min/max over 2 images"
    assert export["quantization"]["source"]["file"] == "student.onnx"
    (dets,) = OnnxDetector(out).detect([calibration[0]])
    assert isinstance(dets, Detections) and (dets.scores >= 0.05).all()
    with pytest.raises(OnnxModelError, match="already quantised"):
        quantize_int8(out, tiny["root"] / "twice.onnx", calibration)
    with pytest.raises(ValueError, match="at least one image"):
        quantize_int8(tiny["dynamic"].path, tiny["root"] / "none.onnx", [])


@pytest.mark.slow
def test_cached_export_and_backend_latency_for_the_app(tiny, tmp_path):
    from hkd.deploy.cache import backend_latency, cached_export

    first = cached_export(tiny["ckpt"], tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert cached_export(tiny["ckpt"], tmp_path / "cache") == first and first.stat().st_mtime_ns == stamp
    first.write_bytes(b"damaged")  # a broken cache entry is exported again, not trusted
    assert read_onnx_meta(cached_export(tiny["ckpt"], tmp_path / "cache"))[1]["check"]["ok"]
    result = backend_latency(tiny["ckpt"], cache_dir=tmp_path / "cache", width=128, height=96, threads=1, runs=2)
    assert result["pytorch"]["runs"] == result["onnxruntime"]["runs"] == 2
    assert result["onnxruntime"]["threads"] == 1 and result["size"] == [128, 96]
    assert result["speedup"] == pytest.approx(result["pytorch"]["median_s"] / result["onnxruntime"]["median_s"])


@pytest.mark.slow
def test_graph_rewrites_are_exact_and_remove_the_slow_ops(tiny):
    import onnx

    from hkd.deploy.export import _fold_pads_into_convs, _merge_levels_by_gather

    def ops(path):
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    plain = export_onnx(tiny["ckpt"], tiny["root"] / "plain.onnx", rewrite=False)
    rewritten, before = ops(tiny["dynamic"].path), ops(plain.path)
    # the SAME paddings of the backbone's stride-2 convs are in the convs now; one Pad is left: the
    # transform's batch padding, which depends on the image size
    assert before.count("Pad") == 6 and rewritten.count("Pad") == 1
    assert before.count("ScatterElements") == 3 and rewritten.count("ScatterElements") == 1  # R indices only
    # the RPN's and the ROI head's NMS: one class-axis NonMaxSuppression each, no If around a single-class one
    assert before.count("If") == 2 and "NonMaxSuppression" not in before
    assert "If" not in rewritten and rewritten.count("NonMaxSuppression") == 2
    assert plain.check.ok and tiny["dynamic"].check.ok
    assert _fold_pads_into_convs(onnx.load(str(tiny["dynamic"].path))) == 0, "nothing left to fold"
    levels = torch.tensor([2, 0, 1, 0, 2])
    per_level = [torch.arange(float(n)).reshape(n, 1) + 10 * lv for lv, n in enumerate((2, 1, 2))]
    merged = _merge_levels_by_gather(levels, per_level)
    assert merged.flatten().tolist() == [20.0, 0.0, 10.0, 1.0, 21.0]
