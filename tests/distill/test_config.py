"""Distillation configs: plain data, globs, schedules, and errors that list the valid choices."""
import json
from pathlib import Path

import pytest
import yaml

from hkd.distill.config import ConfigError, DistillConfig, Stage, load_config, parse_config
from hkd.models.hierarchy import HIERARCHIES
from hkd.models.presets import get_preset

from .conftest import STUDENT, TEACHER

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"


@pytest.fixture(scope="module")
def specs():
    return get_preset(TEACHER).hierarchy, get_preset(STUDENT).hierarchy


def _resolve(levels, specs, schedule=None):
    section = {"levels": levels} if schedule is None else {"levels": levels, "schedule": schedule}
    return parse_config({"distill": section}).resolve(*specs)


def test_brief_example_parses_into_terms(specs):
    config = _resolve({
        "backbone.c3": {"loss": "mse", "weight": 1.0},
        "neck.p3": [{"loss": "masked_mse", "weight": 1.0}, {"loss": "attention", "weight": 50.0}],
        "rpn.objectness": {"loss": "soft_bce", "weight": 1.0, "temperature": 1.0},
        "rpn.deltas": {"loss": "bounded_l2", "weight": 0.5, "margin": 0.0},
        "roi.features": {"loss": "mse", "weight": 1.0},
        "roi.logits": {"loss": "kd_kl", "weight": 1.0, "temperature": 2.0, "bg_weight": 0.5},
        "roi.deltas": {"loss": "bounded_l2", "weight": 0.5},
    }, specs, [{"until_step": 500, "hierarchies": ["backbone", "neck"]}, {"hierarchies": "all"}])
    assert [t.key for t in config.terms] == [
        "kd/backbone.c3/mse", "kd/neck.p3/masked_mse", "kd/neck.p3/attention", "kd/rpn.objectness/soft_bce",
        "kd/rpn.deltas/bounded_l2", "kd/roi.features/mse", "kd/roi.logits/kd_kl", "kd/roi.deltas/bounded_l2"]
    attention = config.terms[2]
    assert attention.weight == 50.0 and attention.params == {} and attention.hierarchy == "neck"
    assert config.terms[6].params == {"temperature": 2.0, "bg_weight": 0.5}
    assert config.schedule == (Stage(500, ("backbone", "neck")), Stage(None, HIERARCHIES))
    assert config.resolved


def test_globs_expand_to_levels_of_both_models_and_exact_keys_win(specs):
    config = _resolve({"neck.*": [{"loss": "masked_mse"}, {"loss": "attention", "weight": 2.0}],
                       "neck.p4": {"loss": "mse", "weight": 3.0}, "backbone.c[45]": "mse"}, specs)
    assert [t.key for t in config.terms] == [
        "kd/backbone.c4/mse", "kd/backbone.c5/mse",
        "kd/neck.p3/masked_mse", "kd/neck.p3/attention",
        "kd/neck.p4/mse",
        "kd/neck.p5/masked_mse", "kd/neck.p5/attention",
        "kd/neck.p6/masked_mse", "kd/neck.p6/attention"]
    assert config.terms[4].weight == 3.0
    assert config.terms[2].source == "neck.*"
    # an exact key before the glob wins as well
    early = _resolve({"neck.p4": "mse", "neck.*": "attention"}, specs)
    assert [t.key for t in early.terms if t.level == "neck.p4"] == ["kd/neck.p4/mse"]


def test_two_globs_giving_a_level_the_same_loss_is_an_error(specs):
    with pytest.raises(ConfigError, match=r"neck.p3.*'mse' twice"):
        _resolve({"neck.*": "mse", "neck.p[34]": "mse"}, specs)


@pytest.mark.parametrize("levels, schedule, bad, choices", [
    ({"neck.p9": "mse"}, None, "'neck.p9'", ["neck.p3", "backbone.c2", "roi.logits"]),
    ({"nek.*": "mse"}, None, "'nek.*'", ["neck.p3"]),
    ({"neck.p3": "mse2"}, None, "'mse2'", ["mse", "masked_mse", "attention", "kd_kl"]),
    ({"neck.p3": "kd_kl"}, None, "'kd_kl'", ["losses for it: mse, masked_mse, nmse, masked_nmse, attention"]),
    ({"roi.logits": "mse"}, None, "'mse'", ["losses for it: kd_kl"]),
    ({"roi.logits": {"loss": "kd_kl", "temprature": 2.0}}, None, "'temprature'", ["weight, temperature, bg_weight"]),
    ({"neck.p3": {"loss": "mse", "psi": 0.5}}, None, "'psi'", ["params: weight"]),
    ({"neck.p3": "mse"}, [{"hierarchies": ["nek"]}], "'nek'", ["backbone, neck, rpn, roi, head, all"]),
])
def test_typos_name_the_key_and_list_the_choices(specs, levels, schedule, bad, choices):
    with pytest.raises(ConfigError) as info:
        _resolve(levels, specs, schedule)
    message = str(info.value)
    assert bad in message
    for choice in choices:
        assert choice in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("section, match", [
    ({"levels": {}, "levles": {}}, "unknown key 'levles'; keys: levels, schedule, adapters"),
    ({"levels": {}, "adapters": {"fit": "lsq"}}, "adapters.fit: unknown fit 'lsq'; choices: least_squares, gradient"),
    ({"levels": {}, "adapters": {"momentum": 1.0}}, r"adapters.momentum: expected a number in \[0, 1\)"),
    ({"levels": {}, "adapters": {"ridge": 0}}, "adapters.ridge: expected a number > 0"),
    ({"levels": {}, "adapters": {"fits": "gradient"}}, "adapters: unknown key 'fits'; keys: fit, momentum, ridge"),
    ({"levels": {"neck.p3": {"weight": 1.0}}}, "missing 'loss'"),
    ({"levels": {"neck.p3": {"loss": "mse", "weight": -1}}}, r"weight: must be a number >= 0"),
    ({"levels": {"roi.logits": {"loss": "kd_kl", "temperature": 0}}}, r"temperature: must be > 0"),
    ({"levels": {"roi.logits": {"loss": "kd_kl", "temperature": "hot"}}}, "must be a number"),
    ({"levels": {"neck.p3": [{"loss": "mse"}, {"loss": "mse"}]}}, "'mse' listed twice"),
    ({"levels": {"p3": "mse"}}, "'<hierarchy>.<level>'"),
    ({"levels": {}, "schedule": [{"until_step": 5, "hierarchies": "all"}]}, "last stage lasts to the end"),
    ({"levels": {}, "schedule": [{"until_step": 5, "hierarchies": "all"}, {"until_step": 5, "hierarchies": []},
                                 {"hierarchies": "all"}]}, r"schedule\[1\].until_step: must be an int greater than 5"),
    ({"levels": {}, "schedule": [{"hierarchies": "all", "from_step": 3}]}, "unknown key 'from_step'; keys: until_step, hierarchies"),
    ({"levels": {}, "schedule": [{}]}, "missing 'hierarchies'"),
])
def test_structure_errors(section, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"distill": section})


def test_levels_missing_or_not_comparable_are_explained(specs):
    resnet = get_preset("fasterrcnn_resnet50_fpn.coco_person").hierarchy
    with pytest.raises(ConfigError, match=r"'neck.p2' \(it is not a level of both models\)"):
        parse_config({"levels": {"neck.p2": "mse"}}).resolve(resnet, specs[1])
    # torchvision's RPN has 3 anchors per location, the student's 6
    with pytest.raises(ConfigError, match=r"'rpn.objectness' \(both models have it, but it is not comparable "
                                          r"\(6 vs 3 anchors\)\); levels: backbone.c2"):
        parse_config({"levels": {"rpn.objectness": "soft_bce"}}).resolve(resnet, specs[1])


def test_schedule_switches_hierarchies_on_at_the_right_step(specs):
    config = _resolve({"backbone.c3": "mse", "neck.p3": "mse", "roi.logits": "kd_kl"}, specs, [
        {"until_step": 10, "hierarchies": ["backbone"]},
        {"until_step": 20, "hierarchies": ["backbone", "neck"]},
        {"hierarchies": "all"}])
    keys = lambda step: [t.key for t in config.active_terms(step)]  # noqa: E731
    assert keys(0) == keys(9) == ["kd/backbone.c3/mse"]
    assert keys(10) == keys(19) == ["kd/backbone.c3/mse", "kd/neck.p3/mse"]
    assert keys(20) == keys(10**6) == ["kd/backbone.c3/mse", "kd/neck.p3/mse", "kd/roi.logits/kd_kl"]
    stop = _resolve({"neck.p3": "mse"}, specs, [{"until_step": 3, "hierarchies": "neck"}, {"hierarchies": []}])
    assert [t.key for t in stop.active_terms(2)] == ["kd/neck.p3/mse"] and stop.active_terms(3) == []
    default = _resolve({"roi.logits": "kd_kl"}, specs)
    assert default.hierarchies_at(0) == HIERARCHIES
    listed = _resolve({"roi.logits": "kd_kl"}, specs, [{"hierarchies": ["all"]}])
    assert listed.hierarchies_at(0) == HIERARCHIES


def test_round_trip_through_plain_data(specs):
    config = load_config(CONFIGS / "distill_full.yaml", *specs)
    again = parse_config(json.loads(json.dumps(config.to_dict()))).resolve(*specs)
    assert again.terms == config.terms and again.schedule == config.schedule
    unresolved = load_config(CONFIGS / "distill_full.yaml")
    assert not unresolved.resolved
    assert parse_config(unresolved.to_dict()).resolve(*specs).terms == config.terms
    assert config.resolve(*specs).terms == config.terms  # resolving twice changes nothing


@pytest.mark.parametrize("name, hierarchies", [
    ("distill_full.yaml", {"backbone", "neck", "rpn", "roi"}),
    ("distill_backbone.yaml", {"backbone"}),
    ("distill_fpn.yaml", {"neck"}),
    ("distill_rpn.yaml", {"rpn"}),
    ("distill_roi.yaml", {"roi"}),
])
def test_shipped_configs_load_for_the_default_pair(specs, name, hierarchies):
    path = CONFIGS / name
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["distill"]  # only the distill section; training sections are added elsewhere
    config = load_config(path, *specs)
    assert {t.hierarchy for t in config.terms} == hierarchies
    assert all(t.weight > 0 for t in config.terms)


def test_full_config_distills_every_fpn_level_and_schedules_features_first(specs):
    config = load_config(CONFIGS / "distill_full.yaml", *specs)
    assert {t.level for t in config.terms if t.hierarchy == "neck"} == {"neck.p3", "neck.p4", "neck.p5", "neck.p6"}
    assert set(config.hierarchies_at(0)) == {"backbone", "neck"}
    assert {t.hierarchy for t in config.active_terms(10**5)} == {"backbone", "neck", "rpn", "roi"}


def test_json_files_and_whole_run_configs(tmp_path, specs):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train": {"steps": 10}, "distill": {"levels": {"roi.logits": "kd_kl"}}}))
    config = load_config(path, *specs)
    assert [t.key for t in config.terms] == ["kd/roi.logits/kd_kl"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  levels:\n    neck.p3: {loss: msee}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: distill.levels.neck.p3: unknown loss 'msee'"):
        load_config(bad)
    assert load_config(config) is config
    assert isinstance(parse_config({"levels": {}}), DistillConfig)


def test_every_public_name_of_hkd_distill_resolves():
    import hkd.distill as distill

    for name in distill.__all__:
        assert getattr(distill, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        distill.nothing  # noqa: B018


@pytest.mark.parametrize("path", sorted((CONFIGS.parents[1] / "bench" / "variants").glob("*.yaml")), ids=lambda p: p.name)
def test_every_tune_variant_loads_for_its_pair(path):
    """bench/variants/*.yaml are distill configs of the default pair, or (retina_*) of the single-stage pair."""
    teacher, student = (("hkd_retina_lite2.teacher", "hkd_retina_lite0.student") if path.name.startswith("retina_")
                        else (TEACHER, STUDENT))
    config = load_config(path, get_preset(teacher).hierarchy, get_preset(student).hierarchy)
    assert config.terms and all(t.weight > 0 for t in config.terms)
