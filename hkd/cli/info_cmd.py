"""``hkd info CHECKPOINT [--json] [--bench]``: metadata, parameters, FLOPs and latency.

An exported ``.onnx`` model is described from its own metadata and timed through
onnxruntime (:mod:`hkd.deploy.runtime`); the JSON has the same keys, plus ``onnx``.
"""
from __future__ import annotations

import json

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="describe a checkpoint: metadata, params, FLOPs, CPU latency")
    p.add_argument("checkpoint", help=".safetensors HKD checkpoint, a foreign .pth with --preset, "
                                      "or an exported .onnx model (timed through onnxruntime)")
    p.add_argument("--preset", help="architecture of a foreign weights file (see `hkd presets`)")
    p.add_argument("--size", default=None,
                   help="input WIDTHxHEIGHT for FLOPs and latency (default 640x480; a fixed-size ONNX model: its size)")
    p.add_argument("--bench", action="store_true", help="also measure latency (on --device)")
    p.add_argument("--device", default="cpu",
                   help="where --bench times the model: cpu (default) | auto | cuda | cuda:N; "
                        "an .onnx model is timed by onnxruntime on the CPU")
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


def describe(checkpoint: str, *, preset: str | None = None, size=(640, 480), bench=False, threads=2,
             device: str = "cpu") -> dict:
    from dataclasses import asdict

    from hkd.deploy.runtime import is_onnx

    if is_onnx(checkpoint):
        if preset:
            raise CLIError(f"--preset is for foreign weights; {checkpoint} carries its own metadata")
        if bench and str(device).lower() not in ("cpu", "auto"):
            raise CLIError(f"--device {device}: an .onnx model is timed by onnxruntime's CPU provider; "
                           "time the .safetensors checkpoint on the GPU instead")
        return describe_onnx(checkpoint, size=size, bench=bench, threads=threads)

    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.presets import get_preset
    from hkd.models.device import DeviceError, resolve_device
    from hkd.models.profile import flops_by_hierarchy, latency, params_by_hierarchy

    if bench:
        try:
            target = resolve_device(device)
        except DeviceError as exc:
            raise CLIError(f"--device: {exc}") from None
    loaded = load_checkpoint(checkpoint, preset=preset)
    p = get_preset(loaded.meta.preset)
    info = {
        "backend": "pytorch",
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
        info["latency"] = latency(prepare_for_inference(loaded.model), *size, device=target, threads=threads)
    return info


def describe_onnx(path: str, *, size=None, bench=False, threads=2) -> dict:
    """:func:`describe` for an exported model: params/FLOPs as its checkpoint recorded them, latency through
    onnxruntime. ``size=None``: the model's fixed input size, or 640x480 for a dynamic one."""
    from dataclasses import asdict

    from hkd.deploy.runtime import OnnxDetector, onnx_latency, read_onnx_meta
    from hkd.models.meta import file_sha256
    from hkd.models.presets import PRESETS

    meta, export = read_onnx_meta(path)
    fixed = None if export["input"]["dynamic"] else (export["input"]["shape"][2], export["input"]["shape"][1])
    if size is None:
        size = fixed or (640, 480)
    elif fixed and tuple(size) != fixed:
        raise CLIError(f"{path} was exported for {fixed[0]}x{fixed[1]} images only; --size {size[0]}x{size[1]} "
                       "cannot run (export with --dynamic for any size)")
    preset = PRESETS.get(meta.preset)
    cost = meta.cost or {}
    info = {
        "backend": "onnxruntime",
        "path": str(path),
        "sha256": file_sha256(path),
        "meta": asdict(meta),
        "role": preset.role if preset else "unknown",
        # what the checkpoint recorded when it was saved (the graph itself has the norms folded away)
        "params": cost.get("params", {}),
        "flops": cost.get("flops", {}),
        "flops_size": cost.get("flops_size", list(size)),
        "levels": preset.hierarchy.to_rows() if preset else [],
        "onnx": export,
    }
    if bench:
        detector = OnnxDetector(path, threads=threads)
        info["onnx"] = {**export, "providers": detector.providers}
        info["latency"] = onnx_latency(detector, *size)
        info["latency_size"] = list(size)
    return info


def run(args) -> int:
    from hkd.deploy.runtime import is_onnx
    from hkd.models.checkpoint import CheckpointError

    size = parse_size(args.size) if args.size else (None if is_onnx(args.checkpoint) else (640, 480))
    try:
        info = describe(args.checkpoint, preset=args.preset, size=size, bench=args.bench, threads=args.threads,
                        device=args.device)
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
    stored = f"stored as {meta['dtype']}"
    if info["backend"] == "onnxruntime":
        quantized = info["onnx"].get("quantization")
        graph = f"{quantized['weights']} graph" if quantized else "float32 graph"
        stored = f"checkpoint stored as {meta['dtype']}, {graph}"
    print(f"created      {meta['created'] or '-'}  library {meta['library_version']}  {stored}")
    print(f"parent       {meta['parent'] or '-'}")
    if meta["metrics"]:
        print("metrics      " + ", ".join(f"{k}={v}" for k, v in meta["metrics"].items()))
    if "onnx" in info:
        onnx = info["onnx"]
        shape = "any image size" if onnx["input"]["dynamic"] else "x".join(map(str, onnx["input"]["shape"][:0:-1]))
        check = onnx.get("check")
        verdict = "check against PyTorch " + ("passed" if check and check["ok"] else "not run")
        if onnx.get("quantization"):
            verdict = f"{onnx['quantization']['weights']}, calibrated by {onnx['quantization']['calibration']}"
        print(f"onnx         opset {onnx['opset']}, {shape}, from {onnx['source']['file']} "
              f"(sha256 {onnx['source']['sha256'][:12]}), {verdict}")
    if not info["params"] and not info["flops"]:
        print("\nparams and FLOPs: not recorded in the metadata of the checkpoint this model was exported from")
    else:
        _print_cost(info)
    if "latency" in info:
        lat = info["latency"]
        if info["backend"] == "onnxruntime":
            w, h = info["latency_size"]
            print(f"\nlatency      {lat['median_s'] * 1000:.0f} ms median at {w}x{h} (onnxruntime "
                  f"{lat['provider']}, {lat['runs']} runs, {lat['threads']} threads)")
        else:
            where = "CPU" if lat["device"] == "cpu" else lat["device"]
            print(f"\nlatency      {lat['median_s'] * 1000:.0f} ms median on {where} "
                  f"({lat['runs']} runs, {lat['threads']} threads)")
    return 0


def _print_cost(info: dict) -> None:
    w, h = info["flops_size"]
    print(f"\n{'hierarchy':10s} {'params':>10s} {'GFLOPs@' + f'{w}x{h}':>16s}")
    for key in ("backbone", "neck", "rpn", "roi", "head", "total"):
        if key in info["params"] or key in info["flops"]:
            print(f"{key:10s} {info['params'].get(key, 0) / 1e6:9.2f}M {info['flops'].get(key, 0) / 1e9:16.2f}")
