"""``hkd info CHECKPOINT [--json] [--bench]``: metadata, parameters, FLOPs and latency."""
from __future__ import annotations

import json

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="describe a checkpoint: metadata, params, FLOPs, CPU latency")
    p.add_argument("checkpoint", help=".safetensors HKD checkpoint, or a foreign .pth with --preset")
    p.add_argument("--preset", help="architecture of a foreign weights file (see `hkd presets`)")
    p.add_argument("--size", default="640x480", help="input WIDTHxHEIGHT for FLOPs and latency (default 640x480)")
    p.add_argument("--bench", action="store_true", help="also measure CPU latency")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for --bench (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CLIError(f"--size must look like 640x480, got {text!r}") from None
    if not (32 <= w <= 8192 and 32 <= h <= 8192):
        raise CLIError(f"--size {text}: width and height must be between 32 and 8192")
    return w, h


def describe(checkpoint: str, *, preset: str | None = None, size=(640, 480), bench=False, threads=2) -> dict:
    from dataclasses import asdict

    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.presets import get_preset
    from hkd.models.profile import cpu_latency, flops_by_hierarchy, params_by_hierarchy

    loaded = load_checkpoint(checkpoint, preset=preset)
    p = get_preset(loaded.meta.preset)
    info = {
        "path": str(loaded.path),
        "sha256": loaded.sha256,
        "meta": asdict(loaded.meta),
        "role": p.role,
        "params": params_by_hierarchy(loaded.model),
        "flops": flops_by_hierarchy(loaded.model, *size),
        "flops_size": list(size),
        "levels": p.hierarchy.to_rows(),
    }
    if bench:
        from hkd.models.optimize import prepare_for_inference

        # timed as it is run: frozen norms folded, channels-last (FLOPs above are unchanged by it)
        info["latency"] = cpu_latency(prepare_for_inference(loaded.model), *size, threads=threads)
    return info


def run(args) -> int:
    from hkd.models.checkpoint import CheckpointError

    size = parse_size(args.size)
    try:
        info = describe(args.checkpoint, preset=args.preset, size=size, bench=args.bench, threads=args.threads)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = info["meta"]
    print(f"checkpoint   {info['path']}")
    print(f"preset       {meta['preset']} ({info['role']})")
    print(f"classes      {', '.join(meta['classes'])}")
    print(f"input size   min {meta['min_size']} / max {meta['max_size']} px")
    print(f"created      {meta['created'] or '-'}  library {meta['library_version']}  stored as {meta['dtype']}")
    print(f"parent       {meta['parent'] or '-'}")
    if meta["metrics"]:
        print("metrics      " + ", ".join(f"{k}={v}" for k, v in meta["metrics"].items()))
    w, h = info["flops_size"]
    print(f"\n{'hierarchy':10s} {'params':>10s} {'GFLOPs@' + f'{w}x{h}':>16s}")
    for key in ("backbone", "neck", "rpn", "roi", "head", "total"):
        if key in info["params"] or key in info["flops"]:
            print(f"{key:10s} {info['params'].get(key, 0) / 1e6:9.2f}M {info['flops'].get(key, 0) / 1e9:16.2f}")
    if "latency" in info:
        lat = info["latency"]
        print(f"\nCPU latency  {lat['median_s'] * 1000:.0f} ms median ({lat['runs']} runs, {lat['threads']} threads)")
    return 0
