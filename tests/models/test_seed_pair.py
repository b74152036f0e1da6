"""The seed paper's pair: a ResNet-50-FPN teacher that is torchvision's detector key for key, and a
ResNet-18 student ≥ 6× smaller; ImageNet weights only from local torchvision files."""
import json
import logging

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from hkd.cli import main
from hkd.models.backbones import torch_hub_file
from hkd.models.presets import RESNET_WEIGHT_FILES, build_detector, get_preset, seed_pair
from hkd.models.profile import params_by_hierarchy
from hkd.models.taps import Tap
from tests.conftest import one_torch_thread

TEACHER, STUDENT = seed_pair()


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def torchvision_r50():
    torch.manual_seed(0)
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                   min_size=128, max_size=160).eval()


def test_student_is_at_least_6x_smaller_than_the_teacher():
    t = params_by_hierarchy(build_detector(TEACHER))["total"]
    s = params_by_hierarchy(build_detector(STUDENT))["total"]
    assert t / s >= 6.0, (t, s)
    assert 41e6 < t < 42e6  # torchvision's fasterrcnn_resnet50_fpn with 2 classes (frozen norms: buffers)


def test_teacher_holds_torchvision_keys_and_computes_what_torchvision_computes(torchvision_r50):
    teacher = build_detector(TEACHER, min_size=128, max_size=160).eval()
    theirs = {k: v for k, v in torchvision_r50.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in teacher.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    teacher.load_state_dict(theirs)
    image = torch.rand(3, 128, 160)  # 128x160: no resize, no padding, so the batches are the same images
    with torch.no_grad():
        ours = teacher.backbone(teacher.transform([image])[0].tensors)
        ref = torchvision_r50.backbone(torchvision_r50.transform([image])[0].tensors)
    assert list(ours) == list(ref) == ["0", "1", "2", "3", "pool"]
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-4 * ref[key].abs().max().item())


@pytest.mark.parametrize("name", [TEACHER, STUDENT])
def test_levels_are_where_the_spec_says(name):
    model = build_detector(name, min_size=96, max_size=128).eval()
    spec = get_preset(name).hierarchy
    maps = [lv.name for lv in spec if lv.kind == "map"]
    assert maps == ["backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5",
                    "neck.p2", "neck.p3", "neck.p4", "neck.p5", "neck.p6"]
    with torch.no_grad(), Tap(model, spec, maps + ["rpn.objectness", "roi.logits"]) as tap:
        model([torch.rand(3, 96, 128)])
    for name_ in maps:
        level = spec[name_]
        assert tap[name_].shape[1] == level.channels, name_
        assert 128 // tap[name_].shape[-1] == level.stride, name_
    assert [m.shape[1] for m in tap["rpn.objectness"]] == [spec["rpn.objectness"].channels] * 5


def test_imagenet_weights_come_from_a_local_torchvision_file(tmp_path):
    torch.manual_seed(3)
    imagenet = resnet18()  # torchvision's own classifier, saved as torchvision saves it
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    student = build_detector(STUDENT, pretrained_backbone=True, backbone_weights=str(path))
    body = student.backbone.body
    torch.testing.assert_close(body.conv1.weight, imagenet.conv1.weight)
    torch.testing.assert_close(body.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    torch.testing.assert_close(body.layer3[1].bn2.running_var, imagenet.layer3[1].bn2.running_var)
    assert body.layer4[0].conv1.weight.shape == (256, 256, 3, 3)  # the narrowed stage starts afresh


def test_no_local_weights_is_random_init_with_a_warning_and_no_download(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("hkd must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with caplog.at_level(logging.WARNING, logger="hkd.models"):
        build_detector(STUDENT, pretrained_backbone=True)
    assert str(torch_hub_file(RESNET_WEIGHT_FILES["resnet18"])) in caplog.text
    assert "random init" in caplog.text and "model.backbone_weights" in caplog.text


def test_a_wrong_backbone_file_is_a_clear_error(tmp_path):
    from hkd.models.checkpoint import CheckpointError

    path = tmp_path / "not_resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not torchvision's ImageNet resnet18: .*missing tensors"):
        build_detector(STUDENT, backbone_weights=str(path))


@pytest.mark.slow
def test_presets_cli_lists_the_seed_pair(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert TEACHER in out and STUDENT in out
    assert f"seed paper's pair: {TEACHER} -> {STUDENT} (6." in out
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["seed_pair"]["param_ratio"] >= 6
    roles = {r["name"]: r["role"] for r in data["presets"]}
    assert roles[TEACHER] == "teacher" and roles[STUDENT] == "student"


def test_backbone_weights_is_a_config_key_of_the_resnet_presets(tmp_path):
    from hkd.train.config import ConfigError, config_from_dict, load_config
    from hkd.train.run_setup import build_student

    torch.manual_seed(4)
    imagenet = resnet18()
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    (tmp_path / "run.yaml").write_text(f"model: {{preset: {STUDENT}, backbone_weights: resnet18.pth}}\n"
                                       "data: {train: data}\n")
    cfg = load_config(tmp_path / "run.yaml")  # relative to the config file, like every path key
    assert cfg.model.backbone_weights == str(tmp_path / "resnet18.pth")
    model, parent = build_student(cfg)
    assert parent is None
    torch.testing.assert_close(model.backbone.body.layer2[0].conv1.weight, imagenet.layer2[0].conv1.weight)

    raw = {"model": {"preset": "hkd_frcnn_lite0.student", "backbone_weights": "x.pth"}, "data": {"train": "d"}}
    with pytest.raises(ConfigError, match="does not take a backbone weights file.*hkd_frcnn_r18.student"):
        config_from_dict(raw)
    raw["model"] = {"preset": STUDENT, "backbone_weights": "x.pth", "pretrained_backbone": False}
    with pytest.raises(ConfigError, match="pretrained_backbone is false"):
        config_from_dict(raw)
    raw["model"] = {"preset": STUDENT, "backbone_weights": str(tmp_path / "missing.pth")}
    with pytest.raises(ConfigError, match="model.backbone_weights: .*missing.pth: no such checkpoint file"):
        build_student(config_from_dict(raw))
