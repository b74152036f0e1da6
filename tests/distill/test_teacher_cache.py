"""The teacher cache: bit-exact image-level outputs, the same losses and gradients, misses, corrupt entries."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from torchvision.models.detection.image_list import ImageList

from hkd.distill import ConfigError, Distiller
from hkd.distill.teacher_cache import TeacherCache, image_levels, teacher_image_outputs
from hkd.models.optimize import prepare_for_inference
from hkd.models.presets import build_detector, get_preset
from hkd.train.config import ConfigError as RunConfigError
from hkd.train.config import load_config as load_run_config

from .conftest import STUDENT, TEACHER, every_term, make_batch, shrink

T_SPEC, S_SPEC = get_preset(TEACHER).hierarchy, get_preset(STUDENT).hierarchy
ALL_TERMS = {"levels": every_term(S_SPEC)}  # every level, every loss: image-level and ROI


@pytest.fixture(scope="module")
def models():
    """(teacher prepared for inference as `hkd distill` loads it: folded norms, channels-last; student)."""
    torch.manual_seed(0)
    teacher = prepare_for_inference(shrink(get_preset(TEACHER).build()))
    student = shrink(get_preset(STUDENT).build())
    return teacher, student


def _batch(seed: int = 0) -> ImageList:
    g = torch.Generator().manual_seed(seed)
    return ImageList(torch.rand(2, 3, 128, 160, generator=g), [(128, 160), (120, 150)])


def _same(a, b) -> bool:
    """Equal values, dtype and strides (tensors or lists of them)."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.stride() == b.stride()
                and torch.equal(a, b))
    return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def _distiller(models, config, cache=None) -> Distiller:
    teacher, student = models
    torch.manual_seed(3)  # the same adapters in every distiller
    return Distiller.build(teacher, T_SPEC, copy.deepcopy(student), S_SPEC, config, teacher_cache=cache).train()


def _step(distiller, batch, step=0):
    """(losses, gradients) of one step, with the same proposal sampling every time."""
    torch.manual_seed(11)
    losses = distiller(*batch, step=step)
    distiller.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in distiller.named_parameters() if p.grad is not None}
    distiller.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def test_cached_outputs_equal_a_fresh_teacher_forward_exactly(models, tmp_path):
    teacher = models[0]
    batch = _batch()
    cold = TeacherCache(tmp_path, "t1").image_outputs(teacher, T_SPEC, batch)
    warm_cache = TeacherCache(tmp_path, "t1")
    warm = warm_cache.image_outputs(teacher, T_SPEC, batch)
    assert (warm_cache.hits, warm_cache.misses) == (1, 0) and warm_cache.bytes_read > 0
    fresh = teacher_image_outputs(teacher, T_SPEC, batch)
    assert set(fresh.levels) == set(image_levels(T_SPEC)) == set(warm.levels)
    assert {lv.split(".")[0] for lv in fresh.levels} == {"backbone", "neck", "rpn"}
    assert not fresh.levels["neck.p3"].is_contiguous()  # channels-last: the layout comes back too
    for name, value in fresh.levels.items():
        assert _same(warm.levels[name], value), name
        assert _same(cold.levels[name], value), name
    assert list(warm.features) == list(fresh.features)
    for name, value in fresh.features.items():
        assert _same(warm.features[name], value), name
    # one file per entry; the FPN dict's tensors are the neck taps' and stored once
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), framework="pt") as fh:
        assert len(list(fh.keys())) == 4 + 4 + 2 * 4  # c2..c5, p3..p6, two heads × four FPN levels


@pytest.mark.slow
def test_distill_step_with_cold_and_warm_cache_equals_the_uncached_step(models, tmp_path):
    batch = make_batch()
    expected_losses, expected_grads = _step(_distiller(models, ALL_TERMS), batch)
    assert {k.split("/")[1].split(".")[0] for k in expected_losses if k.startswith("kd/")} == {
        "backbone", "neck", "rpn", "roi"}
    for expect_hit in (False, True):
        cache = TeacherCache(tmp_path, "t1")
        losses, grads = _step(_distiller(models, ALL_TERMS, cache), batch)
        assert (cache.hits, cache.misses) == ((1, 0) if expect_hit else (0, 1))
        assert set(losses) == set(expected_losses)
        for key, value in expected_losses.items():
            torch.testing.assert_close(losses[key], value, rtol=0, atol=0, msg=key)
        assert set(grads) == set(expected_grads)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def test_another_batch_or_teacher_misses(models, tmp_path):
    teacher = models[0]
    cache = TeacherCache(tmp_path, "t1")
    cache.image_outputs(teacher, T_SPEC, _batch(0))
    cache.image_outputs(teacher, T_SPEC, _batch(0))
    assert (cache.hits, cache.misses) == (1, 1)
    cache.image_outputs(teacher, T_SPEC, _batch(1))  # other pixels
    other_sizes = _batch(0)
    other_sizes.image_sizes = [(128, 160), (128, 160)]
    cache.image_outputs(teacher, T_SPEC, other_sizes)
    assert (cache.hits, cache.misses) == (1, 3)
    other = TeacherCache(tmp_path, "t2")
    other.image_outputs(teacher, T_SPEC, _batch(0))
    assert (other.hits, other.misses) == (0, 1)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_corrupt_entry_is_a_miss_rewritten_with_a_warning(models, tmp_path, caplog, damage):
    teacher = models[0]
    batch = _batch()
    TeacherCache(tmp_path, "t1").image_outputs(teacher, T_SPEC, batch)
    (path,) = tmp_path.rglob("*.safetensors")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x07not a safetensors file" * 10)
    else:  # a well-formed entry of another batch under this name
        TeacherCache(tmp_path / "other", "t1").image_outputs(teacher, T_SPEC, _batch(1))
        path.write_bytes(next((tmp_path / "other").rglob("*.safetensors")).read_bytes())
    cache = TeacherCache(tmp_path, "t1")
    with caplog.at_level(logging.WARNING, logger="hkd.distill.teacher_cache"):
        outputs = cache.image_outputs(teacher, T_SPEC, batch)
    assert (cache.hits, cache.misses, cache.rejected) == (0, 1, 1)
    assert any("unreadable" in r.message and path.name in r.message for r in caplog.records)
    fresh = teacher_image_outputs(teacher, T_SPEC, batch)
    assert all(_same(outputs.levels[name], value) for name, value in fresh.levels.items())
    again = TeacherCache(tmp_path, "t1")
    again.image_outputs(teacher, T_SPEC, batch)
    assert (again.hits, again.misses) == (1, 0)  # rewritten
    assert path.read_bytes() == data
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]  # no temporary file left


def test_configs_with_different_terms_share_entries(models, tmp_path):
    batch = make_batch()
    features_only = {"levels": {"neck.p3": "mse", "backbone.c4": "nmse"}}
    responses = {"levels": {"rpn.objectness": "soft_bce", "roi.logits": "kd_kl", "roi.features": "mse"}}
    first = TeacherCache(tmp_path, "t1")
    _step(_distiller(models, features_only, first), batch)
    assert (first.hits, first.misses) == (0, 1)
    second = TeacherCache(tmp_path, "t1")
    losses, _ = _step(_distiller(models, responses, second), batch)
    assert (second.hits, second.misses) == (1, 0)  # the entry holds the RPN head's outputs too
    expected, _ = _step(_distiller(models, responses), batch)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=0, atol=0, msg=key)


def test_float16_option_stores_half_precision(models, tmp_path):
    teacher = models[0]
    batch = _batch()
    full = TeacherCache(tmp_path / "full", "t1")
    full.image_outputs(teacher, T_SPEC, batch)
    half = TeacherCache(tmp_path / "half", "t1", dtype="float16")
    cold = half.image_outputs(teacher, T_SPEC, batch)
    assert half.bytes_written < 0.55 * full.bytes_written
    (path,) = (tmp_path / "half").rglob("*.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert {fh.get_tensor(name).dtype for name in fh.keys()} == {torch.float16}
    warm = TeacherCache(tmp_path / "half", "t1", dtype=torch.float16).image_outputs(teacher, T_SPEC, batch)
    fresh = teacher_image_outputs(teacher, T_SPEC, batch)
    for name, value in fresh.levels.items():
        assert _same(warm.levels[name], cold.levels[name]), name  # a miss gives the rounded tensors too
        for w, f in zip(*(v if isinstance(v, list) else [v] for v in (warm.levels[name], value))):
            assert w.dtype == torch.float32
            torch.testing.assert_close(w, f, rtol=1e-3, atol=1e-3)
    # another dtype is another key: a float32 cache in the same folder does not read half entries
    mixed = TeacherCache(tmp_path / "half", "t1")
    mixed.image_outputs(teacher, T_SPEC, batch)
    assert mixed.misses == 1
    with pytest.raises(ValueError, match="float16"):
        TeacherCache(tmp_path, "t1", dtype="int8")


def test_an_online_teacher_cannot_use_a_cache(models, tmp_path):
    teacher, student = copy.deepcopy(models[0]), copy.deepcopy(models[1])
    with pytest.raises(ConfigError, match="online teacher learns at every step"):
        Distiller.build(teacher, T_SPEC, student, S_SPEC, {"levels": {"neck.p3": "mse"}}, online=True,
                        teacher_cache=TeacherCache(tmp_path, "t1"))


def test_single_stage_teacher_cache_gives_the_uncached_losses(tmp_path):
    t_name, s_name = "hkd_retina_lite2.teacher", "hkd_retina_lite0.student"
    t_spec, s_spec = get_preset(t_name).hierarchy, get_preset(s_name).hierarchy
    torch.manual_seed(0)
    teacher = build_detector(t_name, min_size=96, max_size=128).eval()
    student = build_detector(s_name, min_size=96, max_size=128)
    config = {"levels": {"neck.p3": "masked_nmse", "head.cls_logits": "focal_kd"}}
    images, targets = make_batch(n=2, h=96, w=128)
    targets = [{"boxes": t["boxes"] * 0.75, "labels": t["labels"]} for t in targets]

    def step(cache):
        torch.manual_seed(3)
        distiller = Distiller.build(teacher, t_spec, copy.deepcopy(student), s_spec, config,
                                    teacher_cache=cache).train()
        return {k: v.detach() for k, v in distiller(images, targets).items()}

    expected = step(None)
    for hits in (0, 1):
        cache = TeacherCache(tmp_path, "retina")
        out = step(cache)
        assert cache.hits == hits
        assert set(out) == set(expected) and "kd/head.cls_logits/focal_kd" in out
        for key, value in expected.items():
            torch.testing.assert_close(out[key], value, rtol=0, atol=0, msg=key)


def test_run_config_teacher_cache_keys(tmp_path):
    base = {"model": {"preset": STUDENT}, "data": {"train": "data"},
            "teacher": "t.safetensors", "train": {"teacher_cache": "cache"}}
    path = tmp_path / "sub" / "cfg.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(base))
    cfg = load_run_config(path)
    assert cfg.train.teacher_cache == str(tmp_path / "sub" / "cache")  # relative to the config file
    assert cfg.train.teacher_cache_dtype is None
    cfg = load_run_config(path, ["train.teacher_cache=elsewhere", "train.teacher_cache_dtype=float16"])
    assert cfg.train.teacher_cache == str((Path.cwd() / "elsewhere").resolve())  # the command line's: the cwd
    assert cfg.train.teacher_cache_dtype == "float16"
    with pytest.raises(RunConfigError, match="teacher_cache_dtype.*float16, float32"):
        load_run_config(path, ["train.teacher_cache_dtype=int8"])
    with pytest.raises(RunConfigError, match="no `teacher:`"):
        load_run_config(path, ["teacher=null"])
    with pytest.raises(RunConfigError, match="online teacher"):
        load_run_config(path, ["teacher=null", "online.kd_after=0"])


@pytest.mark.slow
def test_distill_run_twice_with_a_cache_gives_the_same_losses_and_reports_hits(tmp_path, capsys):
    from hkd.cli import main
    from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
    from hkd.train.run_folder import RunFolder
    from tests.train.conftest import make_tiny_config, write_tiny_dataset

    tiny_dataset = write_tiny_dataset(tmp_path / "data")

    torch.manual_seed(0)
    teacher = build_detector(TEACHER, min_size=96, max_size=128).eval()
    t_path = save_checkpoint(tmp_path / "teacher.safetensors", teacher,
                             CheckpointMeta(preset=TEACHER, min_size=96, max_size=128))
    cfg = make_tiny_config(tiny_dataset, steps=3, checkpoint_every=0)
    cfg["data"]["val"] = None
    cfg["model"]["train_min_sizes"] = [80, 96]  # a batch's size is drawn per step: the same in both runs
    cfg["teacher"] = str(t_path)
    cfg["distill"] = {"levels": {"neck.p3": "mse", "rpn.objectness": "soft_bce", "roi.logits": "kd_kl"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cache = tmp_path / "cache"
    runs = []
    for name in ("cold", "warm"):
        args = ["distill", "--config", str(path), "--out", str(tmp_path / name), "--no-progress",
                "--set", f"train.teacher_cache={cache}"]
        assert main(args) == 0, capsys.readouterr().err
        runs.append(RunFolder(tmp_path / name))
    cold, warm = ([{k: v for k, v in m.items() if k not in ("time", "images_per_s")}
                   for m in run.read_metrics() if "loss" in m] for run in runs)
    assert len(cold) == 3 and cold == warm
    assert any(k.startswith("kd/roi.logits/") for k in cold[0])
    assert "3 misses" in runs[0].log_path.read_text()
    assert "teacher cache" in runs[1].log_path.read_text() and "3 hits, 0 misses" in runs[1].log_path.read_text()
    assert len(list(cache.rglob("*.safetensors"))) == 3
