"""Class activation maps of detections, with pytorch-grad-cam, and attention maps.

The CAM math (channel weights, ReLU, scaling to the image) is pytorch-grad-cam's
(``GradCAM``, ``GradCAMPlusPlus``, ``EigenCAM`` — with a faster, sign-corrected
projection, see ``ThinEigenCAM``); the target is its
``FasterRCNNBoxScoreTarget``, as in its Faster R-CNN tutorial. Two parts are
ours, so that a detector cached for every app session is never modified:

* the activations come from a :class:`hkd.models.taps.Tap` (hooks live only
  during the forward, per thread) through :class:`TapActivationsAndGradients`,
  which replaces the library's hook-registering ``ActivationsAndGradients``;
* the gradient of the target is taken with ``torch.autograd.grad`` with respect
  to the tapped activation only, instead of the library's ``loss.backward()``
  and ``model.zero_grad()``, which would write ``.grad`` into the shared
  model's parameters (and race between threads). The CAM object is built
  around a stand-in whose ``eval()`` does nothing: BaseCAM's constructor
  would otherwise switch the model's mode.

The detections and the CAM come from the same forward (eval mode, gradients
enabled — torchvision detectors in eval mode accept that). For a two-stage
detector the forward is written out from torchvision's own parts
(:class:`_TwoStageForward`): the ROI head first scores every proposal without a
graph, then only the proposals behind the explained detections go through it
again with one. The target's gradient is the same — a detection's score and box
depend on its own proposal only — but ``roi_align``'s backward no longer runs
over all 300–1000 proposals (half of a teacher CAM's time before).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from hkd.models.hierarchy import HierarchySpec, Level
from hkd.models.inference import PEDESTRIAN, image_tensor
from hkd.models.taps import Tap, resolve_module
from hkd.viz.featmaps import (
    TRANSFORM_LEVEL,
    Geometry,
    model_device,
    normalise,
    principal_components,
    require_eval,
    tapped_forward,
)


@functools.cache
def _cam_classes() -> dict[str, type]:
    """The library's CAM classes (imported on first use: pytorch-grad-cam pulls in scikit-learn)."""
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

    class ThinEigenCAM(EigenCAM):
        """EigenCAM with a thin decomposition and a sign correction.

        The library's ``get_2d_projection`` runs ``np.linalg.svd(full_matrices=True)``
        on the (h·w, C) activations, building an (h·w)² matrix it never uses:
        ~13 s for P3 of a 640×480 image, where the same first component takes
        well under a second. Its sign is also arbitrary (pytorch-grad-cam issue
        #315), which the ReLU after it turns into a map of the *background*;
        :func:`principal_components` fixes the sign as the library's
        ``get_2d_projection_with_sign_correction`` does.
        """

        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            return np.stack([principal_components(torch.from_numpy(a), 1)[0].numpy() for a in activations]
                            ).astype(np.float32)

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": ThinEigenCAM}


METHODS = ("gradcam", "gradcam++", "eigencam")
GRADIENT_FREE = ("eigencam",)


@dataclass
class CamResult:
    """A CAM of one image.

    heat: (H, W) float32 in [0, 1], aligned with the image; boxes: (K, 4)
    float32 xyxy and scores: (K,) — the pedestrian detections with score >=
    ``score_thresh`` of the same forward, score-descending (``box_index``
    indexes these); box_index: the detection explained (``None``: all of them;
    EigenCAM explains none in particular); level, method: as asked.
    """

    heat: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    level: str
    method: str
    box_index: int | None = None


class TapActivationsAndGradients:
    """Drop-in for pytorch-grad-cam's ``ActivationsAndGradients``, built on a Tap.

    ``__call__(x)`` runs the detector on ``x`` (1, 3, H, W) inside a Tap on
    ``level``, picks the target detections from the output, and (for gradient
    methods) stores d target / d activation. ``activations`` and ``gradients``
    are lists with one (1, C, h, w) CPU tensor, the padding cells of the
    transformed batch cropped off so that the library's resize to (H, W) lines
    up with the image. ``targets`` is filled in place with the library target.
    """

    def __init__(self, model: nn.Module, level: Level, *, uses_gradients: bool, score_thresh: float,
                 box_index: int | None, restrict_proposals: bool = True) -> None:
        self.model = model
        self.level = level
        self.uses_gradients = uses_gradients
        self.score_thresh = score_thresh
        self.box_index = box_index
        # False: the gradient flows through the ROI head of every proposal (the plain
        # ``model(images)`` forward); the restricted path is tested against it
        self.restrict_proposals = restrict_proposals and _TwoStageForward.applies(model)
        self.activations: list[Tensor] = []
        self.gradients: list[Tensor] = []
        self.targets: list[Any] = []
        self.boxes = np.zeros((0, 4), np.float32)
        self.scores = np.zeros((0,), np.float32)

    def __call__(self, x: Tensor) -> list[dict[str, Tensor]]:
        self.activations, self.gradients = [], []
        # the input needs grad so the activation has a graph even if the model's parameters are frozen
        images = [img.detach().clone().requires_grad_(self.uses_gradients) for img in x]
        with torch.set_grad_enabled(self.uses_gradients), Tap(self.model, [self.level, TRANSFORM_LEVEL]) as tap:
            if self.restrict_proposals and self.uses_gradients:
                forward = _TwoStageForward(self.model, images)
                outputs = forward.outputs
            else:
                outputs = self.model(images)
        activation = tap[self.level.name]
        geometry = Geometry.of(tap[TRANSFORM_LEVEL.name], x.shape[-2:])
        chosen = self._choose(outputs[0])
        if self.uses_gradients:
            from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

            with torch.enable_grad():
                if self.restrict_proposals:
                    scored, explained = forward.with_gradient(self._output_index[torch.from_numpy(chosen)])
                else:
                    scored, explained = _pedestrians(outputs[0]), self.boxes[chosen]
                target = FasterRCNNBoxScoreTarget(labels=[PEDESTRIAN] * len(chosen), bounding_boxes=explained)
                self.targets[:] = [target]
                score = target(scored)
            (grad,) = torch.autograd.grad(score.sum(), activation, allow_unused=True)
            if grad is None:
                raise ValueError(
                    f"the detection scores do not depend on {self.level.name!r} through a gradient (e.g. P6 "
                    "only feeds the RPN, whose proposals carry none); use method='eigencam' or another level"
                )
            self.gradients = [geometry.crop(grad).detach().cpu()]
        self.activations = [geometry.crop(activation).detach().cpu()]
        return [{k: v.detach() for k, v in out.items()} for out in outputs]

    def _choose(self, output: dict[str, Tensor]) -> np.ndarray:
        """Record the pedestrian detections >= score_thresh (score-descending in ``boxes``/``scores``);
        return the indices into ``boxes`` of the detections to explain, (T,) int64."""
        keep = torch.nonzero((output["labels"] == PEDESTRIAN) & (output["scores"] >= self.score_thresh))[:, 0]
        order = keep[torch.argsort(output["scores"][keep].detach(), descending=True, stable=True)]
        self.boxes = output["boxes"][order].detach().cpu().numpy().astype(np.float32)
        self.scores = output["scores"][order].detach().cpu().numpy().astype(np.float32)
        self._output_index = order
        n = len(self.scores)
        if self.box_index is not None:
            if not 0 <= self.box_index < n:
                raise ValueError(
                    f"box_index {self.box_index} is out of range: the model has {n} pedestrian detection(s) "
                    f"with score >= {self.score_thresh}" + (f" (valid: 0..{n - 1})" if n else "")
                )
            return np.array([self.box_index])
        if self.uses_gradients and n == 0:
            raise ValueError(
                f"no pedestrian detection with score >= {self.score_thresh} to explain; lower score_thresh "
                "or use method='eigencam' (it needs no target)"
            )
        return np.arange(n)

    def release(self) -> None:
        """Nothing to remove (the Tap already did); drop the stored tensors."""
        self.activations, self.gradients = [], []
        self.targets.clear()


def _pedestrians(output: dict[str, Tensor]) -> dict[str, Tensor]:
    """The pedestrian detections of one output dict (a two-stage (background, pedestrian) head has no others).

    A single-stage head (RetinaNet) scores every class on the same anchor box, so a
    background-class detection can have exactly the explained box; the target's IoU argmax
    would pick it and score that detection 0.
    """
    keep = output["labels"] == PEDESTRIAN
    return {key: value[keep] for key, value in output.items()}


class _TwoStageForward:
    """A torchvision two-stage detector's eval forward on one image, written out from its
    own parts, that can recompute chosen detections with a graph through their proposals only.

    Construct it inside the caller's Tap and grad mode: the backbone runs there (with a
    graph when gradients are enabled); the RPN and the ROI head over all proposals run
    without one. ``outputs`` is what ``model(images)`` returns.
    """

    def __init__(self, model: nn.Module, images: list[Tensor]) -> None:
        if len(images) != 1:
            raise ValueError(f"one image at a time, got {len(images)}")
        self.model = model
        self.original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, _ = model.transform(images)
        self.image_sizes = batch.image_sizes
        self.features = model.backbone(batch.tensors)
        heads = model.roi_heads
        with torch.no_grad():
            self.proposals, _ = model.rpn(batch, self.features)
            logits, deltas = self._box_head(self.proposals)
            boxes, scores, labels = heads.postprocess_detections(logits, deltas, self.proposals, self.image_sizes)
            # every proposal's decoded pedestrian box, to find the proposal behind each detection
            decoded = heads.box_coder.decode(deltas, self.proposals).reshape(len(deltas), -1, 4)[:, PEDESTRIAN]
            self._decoded = box_ops.clip_boxes_to_image(decoded, self.image_sizes[0])
        self._boxes = boxes[0]
        self.outputs = self._postprocess(boxes, scores, labels)

    @staticmethod
    def applies(model: nn.Module) -> bool:
        """A torchvision Faster R-CNN layout with a plain box head (no mask or keypoint head)."""
        heads = getattr(model, "roi_heads", None)
        return (all(isinstance(getattr(model, a, None), nn.Module) for a in ("transform", "backbone", "rpn"))
                and heads is not None and not heads.has_mask() and not heads.has_keypoint())

    def _box_head(self, proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(class logits, box deltas) of the ROI head on ``proposals`` (per image (K, 4))."""
        heads = self.model.roi_heads
        return heads.box_predictor(heads.box_head(heads.box_roi_pool(self.features, proposals, self.image_sizes)))

    def _postprocess(self, boxes: list[Tensor], scores: list[Tensor], labels: list[Tensor]) -> list[dict[str, Tensor]]:
        detections = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in zip(boxes, scores, labels)]
        return self.model.transform.postprocess(detections, self.image_sizes, self.original_sizes)

    def with_gradient(self, index: Tensor) -> tuple[dict[str, Tensor], np.ndarray]:
        """Detections recomputed, with a graph to the features, from the proposals behind
        ``outputs[0]``'s detections ``index`` (T,) only.

        Each chosen detection is reproduced (same proposal, so the same score and box up to
        float rounding) and survives the head's NMS again: only boxes it already beat are
        left beside it. Returns the detections (``outputs[0]``'s format) and the recomputed
        boxes of the chosen ones, (T, 4) float32 in ``index``'s order: the explained boxes
        for the target, so that each matches its own detection with an IoU of exactly 1 as
        in the full forward (the IoU's gradient at a rounding error from 1 is not 0).
        """
        heads = self.model.roi_heads
        iou = box_ops.box_iou(self._boxes[index], self._decoded)  # (T, proposals)
        source = torch.nonzero((iou >= 1.0 - 1e-4).any(dim=0))[:, 0]
        proposals = [self.proposals[0][source]]
        logits, deltas = self._box_head(proposals)
        boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, self.image_sizes)
        detections = self._postprocess(boxes, scores, labels)[0]
        again = box_ops.box_iou(self.outputs[0]["boxes"][index], detections["boxes"].detach()).argmax(dim=1)
        return detections, detections["boxes"][again].detach().cpu().numpy().astype(np.float32)


class _ModeLocked:
    """What BaseCAM's constructor sees as the model: its ``eval()`` leaves the real model alone."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    def eval(self) -> "_ModeLocked":
        return self

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        pass

    def parameters(self):
        return self._model.parameters()


def detection_cam(
    model: nn.Module,
    spec: HierarchySpec,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    level: str = "neck.p3",
    box_index: int | None = None,
    score_thresh: float = 0.5,
    restrict_proposals: bool = True,
) -> CamResult:
    """CAM of the pedestrian detections of ``image`` at ``level``.

    Args:
        model: a torchvision detector (two-stage, RetinaNet or FCOS) in eval mode (never switched here).
        spec: its hierarchy; ``level`` must be one of its map levels.
        image: (H, W, 3) uint8 RGB.
        method: ``"gradcam"``, ``"gradcam++"`` (target: the detection's score
            plus its IoU with itself, pytorch-grad-cam's
            ``FasterRCNNBoxScoreTarget``) or ``"eigencam"`` (first principal
            component of the activations, no target).
        box_index: explain this detection (an index into ``CamResult.boxes``,
            the same order as ``detect(model, [image], score_thresh=score_thresh)``);
            ``None``: all pedestrian detections with score >= ``score_thresh``.
        restrict_proposals: for a two-stage detector, take the gradient through the ROI
            head of the explained detections' own proposals only (same CAM, a fraction of
            the time); ``False``: through the plain ``model(images)`` forward.
    Raises:
        ValueError: unknown method or level, ``box_index`` out of range, or no
            detection to explain with a gradient method.
    """
    classes = _cam_classes()
    if method not in classes:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    map_levels = [lv.name for lv in spec if lv.kind == "map"]
    if level not in map_levels:
        raise ValueError(f"CAM level must be a feature-map level of this detector, one of {map_levels}; got {level!r}")
    require_eval(model, "detection_cam")
    uses_gradients = method not in GRADIENT_FREE
    adapter = TapActivationsAndGradients(
        model, spec[level], uses_gradients=uses_gradients, score_thresh=score_thresh, box_index=box_index,
        restrict_proposals=restrict_proposals)
    cam = classes[method](_ModeLocked(model), target_layers=[])  # no library hooks, no mode switch
    cam.activations_and_grads = adapter
    cam.target_layers = [resolve_module(model, spec[level].module)]  # counted only: one CAM per layer
    cam.uses_gradients = False  # the adapter took the gradient already (see module docstring)
    try:
        x = image_tensor(image)[None].to(model_device(model))
        heat = cam(input_tensor=x, targets=adapter.targets)[0]
    finally:
        adapter.release()
    heat = np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)
    return CamResult(heat, adapter.boxes, adapter.scores, level, method, box_index)


def attention_maps(model: nn.Module, spec: HierarchySpec, image: np.ndarray, levels: list[str]) -> dict[str, np.ndarray]:
    """Attention maps (h, w) in [0, 1] of map levels, from one tapped forward.

    ``attention_map`` is the attention-transfer loss's own (mean over channels
    of squares, L2-normalised), computed on the map with the padding cells
    cropped, then min-max scaled to [0, 1] for display. ``rpn.*`` levels use
    the finest FPN level.
    """
    from hkd.models.ops import attention_map

    bad = [n for n in levels if spec[n].kind not in ("map", "maps")]
    if bad:
        raise ValueError(f"levels {bad} are not feature maps; choose from "
                         f"{[lv.name for lv in spec if lv.kind in ('map', 'maps')]}")
    values, geometry = tapped_forward(model, spec, image, levels)
    out = {}
    for name in levels:
        fmap = values[name][0] if spec[name].kind == "maps" else values[name]
        fmap = geometry.crop(fmap).float()
        att = attention_map(fmap[None]).reshape(fmap.shape[-2:])
        out[name] = normalise(att).cpu().numpy().astype(np.float32)
    return out
