"""``hkd presets [--json]``: the detector presets and the default teacher/student pair."""
from __future__ import annotations

import json


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="list detector presets (name, role, params, backbone weights)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def preset_rows() -> dict:
    from hkd.models.presets import PRESETS, default_pair, seed_pair
    from hkd.models.profile import params_by_hierarchy

    rows = []
    for preset in PRESETS.values():
        params = params_by_hierarchy(preset.build(pretrained_backbone=False))["total"]
        rows.append({
            "name": preset.name,
            "role": preset.role,
            "family": preset.family,
            "params": params,
            "backbone_weights": preset.backbone_weights,
            "input_size": [preset.max_size, preset.min_size],
            "description": preset.description,
            "levels": preset.hierarchy.names,
        })
    by_name = {r["name"]: r for r in rows}

    def pair(teacher: str, student: str) -> dict:
        ratio = by_name[teacher]["params"] / by_name[student]["params"]
        return {"teacher": teacher, "student": student, "param_ratio": round(ratio, 2)}

    return {"presets": rows, "default_pair": pair(*default_pair()), "seed_pair": pair(*seed_pair())}


def run(args) -> int:
    data = preset_rows()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'name':50s} {'role':9s} {'params':>9s}  backbone weights")
    for r in data["presets"]:
        print(f"{r['name']:50s} {r['role']:9s} {r['params'] / 1e6:8.2f}M  {r['backbone_weights']}")
    print()
    for key, what in (("default_pair", "default pair"), ("seed_pair", "seed paper's pair")):
        pair = data[key]
        print(f"{what}: {pair['teacher']} -> {pair['student']} ({pair['param_ratio']}x fewer parameters)")
    return 0
