"""Running a detector on images: one function for the CLI, the app and evaluation."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

PEDESTRIAN = 1


@dataclass
class Detections:
    """Pedestrian detections of one image, in the image's pixel coordinates.

    boxes: (K, 4) float32 xyxy; scores: (K,) float32 in [0, 1], sorted descending.
    """

    boxes: np.ndarray
    scores: np.ndarray
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_prediction(cls, pred: dict, *, score_thresh: float = 0.05, max_dets: int = 100,
                        seconds: float = 0.0) -> "Detections":
        """Pedestrians (label 1) with score >= ``score_thresh`` from a torchvision prediction dict, at most ``max_dets``."""
        keep = (pred["labels"] == PEDESTRIAN) & (pred["scores"] >= score_thresh)
        boxes = pred["boxes"][keep][:max_dets].detach().cpu().numpy().astype(np.float32)
        scores = pred["scores"][keep][:max_dets].detach().cpu().numpy().astype(np.float32)
        return cls(boxes, scores, seconds)

    def filter(self, score_thresh: float = 0.0, nms_thresh: float | None = None) -> "Detections":
        """Keep scores >= ``score_thresh``; optionally re-run NMS at IoU ``nms_thresh``."""
        keep = self.scores >= score_thresh
        boxes, scores = self.boxes[keep], self.scores[keep]
        if nms_thresh is not None and len(scores):
            idx = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                              torch.zeros(len(scores), dtype=torch.int64), nms_thresh).numpy()
            boxes, scores = boxes[idx], scores[idx]
        return Detections(boxes, scores, self.seconds)

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO results: ``[{image_id, category_id: 1, bbox: [x, y, w, h], score}]``."""
        return [
            {"image_id": image_id, "category_id": 1,
             "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
             "score": round(float(s), 5)}
            for (x1, y1, x2, y2), s in zip(self.boxes, self.scores)
        ]


def image_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array → (3, H, W) float in [0, 1]; tensors pass through."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@torch.inference_mode()
def detect(model: nn.Module, images: list, *, score_thresh: float = 0.05, max_dets: int = 100) -> list[Detections]:
    """Pedestrian detections for each image (uint8 HWC arrays or float CHW tensors).

    The model must be in eval mode (a shared, cached model is never switched
    here). Only label 1 (pedestrian) is kept.
    """
    if model.training:
        raise RuntimeError("detect() needs a model in eval mode; call model.eval() once when loading it")
    tensors = [image_tensor(im) for im in images]
    device = next(model.parameters()).device  # a model moved to a GPU (hkd predict --device cuda)
    out = []
    for tensor in tensors:
        start = time.perf_counter()
        (pred,) = model([tensor.to(device)])
        seconds = time.perf_counter() - start
        out.append(Detections.from_prediction(pred, score_thresh=score_thresh, max_dets=max_dets, seconds=seconds))
    return out
