"""``hkd import WEIGHTS --preset NAME --out CK.safetensors [--coco-person | --reset-head]``.

Wraps weights trained elsewhere — a torchvision detection checkpoint, a model
trained with torchvision's reference scripts, a ``.pth`` holding ``state_dict`` /
``model``, a DDP checkpoint, a bare ``.safetensors`` — into a self-describing HKD
checkpoint that ``hkd predict``, the app and ``teacher:`` / ``model.init`` in run
configs load without being told the architecture. The file is read with
``torch.load(weights_only=True)``: pickled code is refused, never run. Every tensor
must fit the preset by key and shape (:func:`hkd.models.checkpoint.import_checkpoint`).
"""
from __future__ import annotations

import json
from dataclasses import asdict

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    what = "wrap foreign weights (e.g. torchvision's) into an HKD checkpoint"
    p = subparsers.add_parser(name, help=what, description=what)
    p.add_argument("weights", help="foreign weights: .pth / .pt / .bin (state dict, or under 'state_dict' / "
                                   "'model'), or .safetensors")
    p.add_argument("--preset", required=True, help="the architecture the weights are for (see `hkd presets`), "
                                                   "e.g. hkd_frcnn_r50.teacher for torchvision's "
                                                   "fasterrcnn_resnet50_fpn")
    p.add_argument("--out", required=True, help="HKD checkpoint to write (.safetensors)")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--coco-person", action="store_true",
                      help="a torchvision COCO head (91 classes): keep background and person as the preset's "
                           "background and pedestrian")
    head.add_argument("--reset-head", action="store_true",
                      help="class layers of another number of classes start afresh (train before use)")
    p.add_argument("--min-size", type=int, help="inference size (shorter side) to record (default: the preset's)")
    p.add_argument("--max-size", type=int, help="inference size (longer side) to record (default: the preset's)")
    p.add_argument("--json", action="store_true", help="print the written checkpoint's metadata as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from hkd.models.checkpoint import CheckpointError, import_checkpoint

    head = "coco_person" if args.coco_person else "reset" if args.reset_head else "strict"
    try:
        imported = import_checkpoint(args.weights, args.preset, args.out, head=head,
                                     min_size=args.min_size, max_size=args.max_size)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:  # written to a temporary file then renamed: a full disk replaced nothing
        raise CLIError(f"--out {args.out}: cannot write the checkpoint ({exc.strerror or exc}); nothing was "
                       "replaced") from None
    meta = imported.meta
    if args.json:
        print(json.dumps({"path": str(imported.path), "sha256": imported.sha256, "meta": asdict(meta)}, indent=2))
        return 0
    params = meta.cost.get("params", {}).get("total")
    print(f"import: {args.weights} → {imported.path} ({meta.preset}"
          + (f", {params / 1e6:.2f}M parameters" if params else "") + ")")
    for change in imported.changes:
        print(f"  {change}")
    return 0
