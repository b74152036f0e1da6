"""Self-supervised augmented distillation (distill.aux): heads, crops, losses, checkpoints, config, engine."""
import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from hkd.distill import ConfigError, Distiller, load_config, parse_config
from hkd.distill.aux import (
    AuxHeads,
    AuxMeta,
    aux_kl,
    load_aux_heads,
    read_aux_meta,
    sample_crops,
    save_aux_heads,
    teacher_probe,
)
from hkd.models.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint
from hkd.models.presets import build_detector, get_preset
from hkd.train.aux_heads import train_teacher_aux

from .conftest import STUDENT, TEACHER, freeze_batchnorm, make_batch, shrink

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"
LEVELS = ["backbone.c4", "neck.p3"]
CROP = 32  # small crops and few boxes keep the aux passes cheap on a shared CPU


def save_aux(path, teacher, spec, levels=LEVELS, *, heads=None, preset=TEACHER):
    """An aux-heads checkpoint for ``teacher`` without training (random heads, the teacher's probe)."""
    heads = heads or AuxHeads(spec, levels, hidden=16, seed=0)
    meta = AuxMeta(teacher={"file": "teacher.safetensors", "sha256": "0" * 64, "preset": preset, "step": 7},
                   levels={name: spec[name].channels for name in levels}, crop=CROP, head=heads.arch,
                   metrics={"accuracy": 0.5})
    return save_aux_heads(path, heads, meta, teacher_probe(teacher, spec, levels, CROP))


@pytest.fixture(scope="module")
def models():
    t_preset, s_preset = get_preset(TEACHER), get_preset(STUDENT)
    torch.manual_seed(0)
    return shrink(t_preset.build()), t_preset.hierarchy, shrink(s_preset.build()), s_preset.hierarchy


@pytest.fixture(scope="module")
def aux_file(models, tmp_path_factory):
    teacher, t_spec, _, _ = models
    return save_aux(tmp_path_factory.mktemp("aux") / "teacher_aux.safetensors", teacher, t_spec)


def _aux_config(path, **aux):
    return {"levels": {"neck.p3": "mse"}, "aux": {"checkpoint": str(path), "boxes": 2, **aux}}


# -- crops and losses ----------------------------------------------------------
def test_crops_are_rotated_squares_with_joint_labels():
    images, targets = make_batch()
    crops, labels = sample_crops(images, [t["boxes"] for t in targets], crop=CROP, count=3,
                                 generator=torch.Generator().manual_seed(0))
    k = len(labels) // 4
    assert crops.shape == (4 * k, 3, CROP, CROP) and k >= 2 * 2  # both GT boxes of both images, + background
    assert sorted(set(labels.tolist())) == list(range(8))
    for r in range(4):  # rotation r of every crop is the r-th block, label = class * 4 + r
        block = labels[r * k:(r + 1) * k]
        assert torch.equal(block % 4, torch.full_like(block, r))
        assert torch.equal(crops[r * k:(r + 1) * k], torch.rot90(crops[:k], r, dims=(-2, -1)))
    assert (labels[:k] // 4).tolist()[:2] == [1, 1]  # ground truth first in each image
    again = sample_crops(images, [t["boxes"] for t in targets], crop=CROP, count=3,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], crops) and torch.equal(again[1], labels)  # the generator decides


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(6, 8)
    assert aux_kl(logits, logits.clone(), temperature=2.0).item() == 0.0
    assert aux_kl(logits + torch.randn(6, 8), logits).item() > 0


# -- the distiller ---------------------------------------------------------------
def test_aux_kl_is_zero_when_student_is_teacher(tmp_path):
    preset = get_preset(STUDENT)
    torch.manual_seed(0)
    student = shrink(preset.build())
    teacher = copy.deepcopy(student)
    path = save_aux(tmp_path / "aux.safetensors", teacher, preset.hierarchy, preset=STUDENT)
    distiller = Distiller.build(teacher, preset.hierarchy, student, preset.hierarchy, _aux_config(path))
    distiller.aux_student.load_state_dict(distiller.aux_teacher.state_dict())  # same head weights too
    distiller.train()
    freeze_batchnorm(student)
    out = distiller(*make_batch())
    assert {k for k in out if k.startswith("aux/")} == {f"aux/{lv}/{kind}" for lv in LEVELS for kind in ("kl", "ce")}
    for level in LEVELS:
        assert out[f"aux/{level}/kl"].item() == 0.0, level
        assert out[f"aux/{level}/ce"].item() > 0


def test_gradients_reach_the_student_and_its_heads_only(models, aux_file):
    teacher, t_spec, student, s_spec = models
    distiller = Distiller.build(teacher, t_spec, copy.deepcopy(student), s_spec, _aux_config(aux_file))
    distiller.train()
    assert not distiller.aux_teacher.training and not distiller.teacher.training  # train() keeps them in eval
    out = distiller(*make_batch())
    sum(v for k, v in out.items() if k.startswith("aux/")).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in distiller.aux_teacher.parameters())
    assert all(p.grad is not None for p in distiller.aux_student.parameters())
    body = distiller.student.backbone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())
    assert all(p.grad is None for p in distiller.student.roi_heads.parameters())  # crops never reach the heads
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable for p in distiller.aux_student.parameters())
    assert not any(id(p) in trainable for p in distiller.aux_teacher.parameters())


@pytest.mark.slow
def test_zero_aux_weights_leave_the_detection_task_as_without_aux(models, aux_file):
    teacher, t_spec, student, s_spec = models
    with_aux = Distiller.build(teacher, t_spec, copy.deepcopy(student), s_spec,
                               _aux_config(aux_file, weight_kl=0.0, weight_ce=0.0))
    without = Distiller.build(teacher, t_spec, copy.deepcopy(student), s_spec, {"levels": {"neck.p3": "mse"}})
    assert without.aux_student is None and "aux" not in without.config.to_dict()
    assert not any("aux" in key for key in without.state_dict())
    results = []
    for distiller in (with_aux, without):
        distiller.train()
        torch.manual_seed(3)  # proposal sampling
        out = distiller(*make_batch())
        sum(out.values()).backward()
        results.append((out, {n: p.grad.clone() for n, p in distiller.student.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert set(out_a) - set(out_b) == {f"aux/{lv}/{kind}" for lv in LEVELS for kind in ("kl", "ce")}
    for key in out_b:
        assert torch.equal(out_a[key], out_b[key]), key
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_the_schedule_switches_aux_levels_by_hierarchy(models, aux_file):
    teacher, t_spec, student, s_spec = models
    config = _aux_config(aux_file)
    config["schedule"] = [{"until_step": 1, "hierarchies": ["neck"]}, {"hierarchies": []}]
    distiller = Distiller.build(teacher, t_spec, copy.deepcopy(student), s_spec, config)
    distiller.train()
    assert {k for k in distiller(*make_batch(), step=0) if k.startswith("aux/")} == {"aux/neck.p3/kl", "aux/neck.p3/ce"}
    assert not any(k.startswith("aux/") for k in distiller(*make_batch(), step=1))


# -- config ------------------------------------------------------------------------
def test_config_round_trip_and_relative_checkpoint(tmp_path, models):
    _, t_spec, _, s_spec = models
    raw = _aux_config("aux.safetensors", levels=["neck.p3"], temperature=2.0)
    config = parse_config(raw)
    assert config.aux.levels == ("neck.p3",) and config.aux.temperature == 2.0
    assert parse_config(json.loads(json.dumps(config.to_dict()))).aux == config.aux
    assert config.resolve(t_spec, s_spec).aux == config.aux
    path = tmp_path / "configs" / "d.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"distill": raw}))
    assert load_config(path).aux.checkpoint == str(tmp_path / "configs" / "aux.safetensors")
    assert "aux" not in parse_config({"levels": {"neck.p3": "mse"}}).to_dict()


@pytest.mark.parametrize("aux, match", [
    ({"checkpoint": "a.safetensors", "weight": 1.0}, r"distill.aux: unknown key 'weight'; keys: checkpoint, levels, "
                                                     r"weight_kl, weight_ce, temperature, boxes"),
    ({"levels": ["neck.p3"]}, r"distill.aux.checkpoint: .* required"),
    ({"checkpoint": "a.safetensors", "temperature": 0}, r"distill.aux.temperature: must be a number > 0"),
    ({"checkpoint": "a.safetensors", "boxes": 0}, r"distill.aux.boxes: must be an integer >= 1"),
    ({"checkpoint": "a.safetensors", "levels": "p3"}, r"distill.aux.levels: expected a non-empty list"),
])
def test_config_errors_name_the_key(aux, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"levels": {}, "aux": aux})


def test_build_errors_name_the_problem(models, aux_file, tmp_path):
    teacher, t_spec, student, s_spec = models

    def build(config, teacher=teacher, t_spec=t_spec):
        return Distiller.build(teacher, t_spec, copy.deepcopy(student), s_spec, config)

    with pytest.raises(ConfigError, match=r"'neck.p5' has no teacher head in .*teacher_aux.safetensors; "
                                          r"it has: backbone.c4, neck.p3"):
        build(_aux_config(aux_file, levels=["neck.p5"]))
    with pytest.raises(ConfigError, match=r"distill.aux.levels: 'roi.logits' is not a feature level of both models"):
        build(_aux_config(aux_file, levels=["roi.logits"]))
    with pytest.raises(ConfigError, match=r"distill.aux.checkpoint: .*missing.safetensors: no such checkpoint file"):
        build(_aux_config(tmp_path / "missing.safetensors"))
    torch.manual_seed(1)  # the same preset, other weights: the probe features tell them apart
    other = shrink(get_preset(TEACHER).build())
    with pytest.raises(ConfigError, match=r"fitted on another teacher \(teacher.safetensors, sha256 000000000000…, "
                                          r"step 7\): on the probe image this teacher's backbone.c4 features differ"):
        build(_aux_config(aux_file), teacher=other)
    twin = copy.deepcopy(student)  # another preset: the channels differ
    with pytest.raises(ConfigError, match=r"made for another teacher .*: its backbone.c4 head takes 120 channels, "
                                          r"this teacher's backbone.c4 has 112"):
        build(_aux_config(aux_file), teacher=twin, t_spec=s_spec)


# -- checkpoints ------------------------------------------------------------------
def test_aux_checkpoint_round_trip_and_clear_errors(models, aux_file, tmp_path):
    teacher, t_spec, _, _ = models
    loaded = load_aux_heads(aux_file)
    meta = read_aux_meta(aux_file)
    assert meta == loaded.meta and meta.kind == "aux_heads" and meta.format == "hkd-aux-heads/1"
    assert meta.levels == {"backbone.c4": 120, "neck.p3": 256} and meta.crop == CROP
    assert meta.transforms == ["rot0", "rot90", "rot180", "rot270"] and meta.head["hidden"] == 16
    assert meta.teacher["step"] == 7 and meta.metrics == {"accuracy": 0.5} and meta.created
    fresh = AuxHeads(t_spec, LEVELS, hidden=16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(loaded.heads.state_dict().values(), fresh.state_dict().values()))
    probe = teacher_probe(teacher, t_spec, LEVELS, CROP)
    assert all(torch.equal(loaded.probe[name], probe[name]) for name in LEVELS)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a safetensors checkpoint"):
        load_aux_heads(garbage)
    cut = tmp_path / "cut.safetensors"
    data = Path(aux_file).read_bytes()
    cut.write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.safetensors: truncated"):
        load_aux_heads(cut)
    detector = save_checkpoint(tmp_path / "det.safetensors", build_detector(STUDENT, min_size=96, max_size=128),
                               CheckpointMeta(preset=STUDENT))
    with pytest.raises(CheckpointError, match=r"a detector checkpoint \(hkd_frcnn_lite0.student\), not aux heads"):
        load_aux_heads(detector)


def test_train_teacher_aux_is_deterministic_and_leaves_the_teacher_alone(models):
    teacher, t_spec, _, _ = models
    images, targets = make_batch()
    dataset = list(zip(images, targets))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    kwargs = dict(levels=["neck.p3"], steps=1, crop=CROP, boxes=1, batch_size=2, hidden=16)
    first = train_teacher_aux(teacher, t_spec, dataset, seed=0, **kwargs)
    second = train_teacher_aux(teacher, t_spec, dataset, seed=0, **kwargs)
    other = train_teacher_aux(teacher, t_spec, dataset, seed=1, **kwargs)
    same = [torch.equal(a, b) for a, b in zip(first.heads.state_dict().values(), second.heads.state_dict().values())]
    assert all(same) and first.metrics == second.metrics
    assert not all(torch.equal(a, b) for a, b in zip(first.heads.state_dict().values(),
                                                      other.heads.state_dict().values()))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert set(first.metrics["levels"]) == {"neck.p3"} and 0 <= first.metrics["accuracy"] <= 1
    with pytest.raises(ConfigError, match=r"'rpn.objectness' is not a feature level of the teacher; feature levels: "
                                          r"backbone.c2, backbone.c3"):
        train_teacher_aux(teacher, t_spec, dataset, levels=["rpn.objectness"])
    with pytest.raises(ValueError, match="no images"):
        train_teacher_aux(teacher, t_spec, [], levels=["neck.p3"])


def test_shipped_aux_configs_load():
    config = load_config(CONFIGS / "distill_aux.yaml")
    full = load_config(CONFIGS / "distill_full.yaml")
    assert config.terms == full.terms and config.schedule == full.schedule
    assert Path(config.aux.checkpoint) == (CONFIGS.parent / "checkpoints" / "teacher_aux.safetensors").resolve()
    from hkd.train.config import load_config as load_run_config

    run = load_run_config(CONFIGS / "student_hkd_aux.yaml")
    assert Path(run.distill) == CONFIGS / "distill_aux.yaml"


# -- the engine: training-only heads, exact resume ------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from hkd.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig.from_dict({"real_fraction": 0.0, "background_mix": [1.0, 0.0, 1.0], "width": 128, "height": 96})
    generate(root, 4, 0, cfg, workers=1, progress=False)
    return root


@pytest.mark.slow
def test_engine_saves_no_aux_in_the_student_and_resumes_them_exactly(tiny_data, tmp_path):
    from hkd.data.datasets import open_dataset
    from hkd.models.checkpoint import load_checkpoint
    from hkd.train.config import config_from_dict
    from hkd.train.engine import train
    from hkd.train.run_folder import RunFolder

    torch.manual_seed(0)
    t_path = save_checkpoint(tmp_path / "teacher.safetensors", build_detector(TEACHER, min_size=96, max_size=128),
                             CheckpointMeta(preset=TEACHER, min_size=96, max_size=128))
    teacher = load_checkpoint(t_path).model  # the engine's copy is BN-folded: the probe still matches
    fitted = train_teacher_aux(teacher, get_preset(TEACHER).hierarchy, open_dataset(tiny_data), levels=["neck.p3"],
                               steps=1, crop=CROP, boxes=1, batch_size=2, hidden=16)
    spec = get_preset(TEACHER).hierarchy
    aux_path = save_aux_heads(tmp_path / "aux.safetensors", fitted.heads,
                              AuxMeta(teacher={"file": "teacher.safetensors"}, levels={"neck.p3": spec["neck.p3"].channels},
                                      crop=CROP, head=fitted.heads.arch), fitted.probe)

    def run(out, steps, resume=False):
        raw = {
            "model": {"preset": STUDENT, "pretrained_backbone": False, "min_size": 96, "max_size": 128},
            "data": {"train": str(tiny_data)},
            "train": {"steps": steps, "batch_size": 2, "lr": 0.01, "warmup_steps": 2, "log_every": 1,
                      "checkpoint_every": 0, "eval_every": 0, "threads": 1},
            "teacher": str(t_path),
            "distill": {"levels": {"neck.p3": {"loss": "mse", "weight": 0.1}},
                        "aux": {"checkpoint": str(aux_path), "boxes": 1}},
        }
        train(config_from_dict(raw), out, resume=resume, progress=False)
        return RunFolder(out)

    straight = run(tmp_path / "a", 2)
    parted = run(tmp_path / "b", 1)
    parted = run(tmp_path / "b", 2, resume=True)
    metrics = [m for m in straight.read_metrics() if "loss" in m]
    assert {"aux/neck.p3/kl", "aux/neck.p3/ce"} <= set(metrics[0])
    student_keys = set(build_detector(STUDENT).state_dict())
    for folder in (straight, parted):
        final = load_checkpoint(folder.checkpoint("final"))
        with safe_open(str(folder.checkpoint("final")), "pt") as fh:
            assert set(fh.keys()) == student_keys  # the student only: no aux (or adapter) parameters
        assert final.meta.preset == STUDENT
    a, b = (torch.load(f.state_path, weights_only=True) for f in (straight, parted))
    assert a["aux"].keys() == b["aux"].keys() and a["aux"]
    assert all(torch.equal(a["aux"][k], b["aux"][k]) for k in a["aux"])  # resumed heads = uninterrupted heads
    sa, sb = (load_checkpoint(f.checkpoint("final")).model.state_dict() for f in (straight, parted))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_distill_wing_reaches_nothing_above_it():
    """hkd.distill (every name it exports) loads neither the train wing nor the CLI: the aux heads'
    training loop is imported from hkd.train.aux_heads, not re-exported downwards."""
    import subprocess
    import sys

    code = ("import sys, hkd.distill as d; [getattr(d, n) for n in d.__all__]; "
            "print(sorted({m for m in sys.modules if m.startswith(('hkd.train', 'hkd.cli', 'hkd.jobs', 'app'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError):
        import hkd.distill.aux as aux

        aux.train_teacher_aux  # noqa: B018 - the old re-export is gone
