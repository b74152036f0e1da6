"""Every run writes TensorBoard event files beside metrics.jsonl, with the same keys and values."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hkd.train.engine as engine
from hkd.train.config import config_from_dict
from hkd.train.engine import scalars, train
from hkd.train.run_folder import RunFolder


def _events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_file_holds_the_metrics_keys(tiny_dataset, tiny_config, tmp_path):
    train(config_from_dict(tiny_config(tiny_dataset, steps=3, checkpoint_every=0)), tmp_path / "run", progress=False)
    run = RunFolder(tmp_path / "run")
    assert len(list(run.root.glob("events.out.tfevents.*"))) == 1
    events = _events(run.root)
    metrics = run.read_metrics()
    train_lines = [m for m in metrics if "loss" in m]
    keys = set(train_lines[0]) - {"step"}
    assert {"loss", "lr", "det/loss_classifier", "det/loss_objectness"} <= keys
    assert keys <= set(events)
    for line in train_lines:
        for key in keys:
            assert (line["step"], pytest.approx(line[key], rel=1e-6, abs=1e-9)) in events[key], key
    (evaluation,) = [m for m in metrics if "eval" in m]
    assert {"eval/mr/Reasonable", "eval/mr/Heavy", "eval/ap50"} <= set(events)
    assert events["eval/ap50"] == [(3, pytest.approx(evaluation["eval"]["ap50"], abs=1e-7))]


def test_nested_records_flatten_to_slash_tags():
    record = {"step": 5, "loss": 1.5, "eval": {"mr": {"Reasonable": 40.0}, "ap50": 0.5, "images": 4}, "note": "x"}
    assert scalars(record) == [("loss", 1.5), ("eval/mr/Reasonable", 40.0), ("eval/ap50", 0.5), ("eval/images", 4.0)]


def test_a_resumed_run_replaces_the_events_past_its_checkpoint(tiny_dataset, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_dataset, steps=4, checkpoint_every=2)
    cfg["data"]["val"] = None

    class Stop(Exception):
        pass

    real_append = engine.MetricsLog.append

    def append_then_stop(self, record):
        real_append(self, record)
        if record["step"] == 3:  # logged past the step-2 checkpoint, then the run dies
            raise Stop()

    monkeypatch.setattr(engine.MetricsLog, "append", append_then_stop)
    with pytest.raises(Stop):
        train(config_from_dict(cfg), tmp_path / "run", progress=False)
    monkeypatch.setattr(engine.MetricsLog, "append", real_append)
    assert [step for step, _ in _events(tmp_path / "run")["loss"]] == [1, 2, 3]
    train(config_from_dict(cfg), tmp_path / "run", resume=True, progress=False)
    events = _events(tmp_path / "run")
    lines = {m["step"]: m for m in RunFolder(tmp_path / "run").read_metrics()}
    assert [step for step, _ in events["loss"]] == [1, 2, 3, 4]  # step 3 once: the rewritten one
    assert [value for _, value in events["loss"]] == [pytest.approx(lines[s]["loss"], rel=1e-6) for s in (1, 2, 3, 4)]
