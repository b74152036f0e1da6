"""COCO, CityPersons and Caltech as they are distributed, under HKD_DATA_ROOTS: the Evaluate page
lists each and opens every ground-truth image of it (Caltech's from frames written once)."""
from __future__ import annotations

from tests.data.test_formats_official import write_citypersons, write_coco
from tests.evaluation.test_official_layouts import _caltech_60


def test_datasets_as_distributed_are_listed_and_their_images_found(tmp_path, monkeypatch):
    roots = tmp_path / "roots"
    write_coco(roots / "coco")
    write_citypersons(roots / "cityscapes")
    _caltech_60(roots / "caltech")
    monkeypatch.setenv("HKD_DATA_ROOTS", str(roots))
    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    from app.services import datasets, eval_gallery, evaluation

    found = {c.label.rsplit("(", 1)[1].split(",")[0]: c for c in datasets.choices() if c.key.startswith("path:")}
    assert set(found) == {"COCO", "CityPersons", "Caltech"}, [c.label for c in datasets.choices()]
    prepared = {}
    for kind, choice in found.items():
        assert choice.annotated and choice.exists, kind
        prepared[kind] = evaluation.prepare(choice, None)
        assert prepared[kind].gt["images"], kind
        for image in prepared[kind].gt["images"]:
            assert eval_gallery.image_path(prepared[kind], image["file_name"]).is_file(), (kind, image)
    assert prepared["Caltech"].images_dir.is_relative_to(tmp_path / "cache" / "frames")
    assert prepared["COCO"].images_dir == roots / "coco" / "val2017"
