"""SynthPed: the embedded, generated pedestrian benchmark (``hkd synth``).

No labelled pedestrian dataset can be downloaded where HKD runs, so it makes
one. Each image is a scene with a ground plane -- a real photograph, the
empty background plate of ``vtest.avi`` (frames 0-450) or a ray-cast
procedural street -- filled far to near with:

- people: articulated procedural figures (walking/standing, four views,
  child/adult, clothes, hair, bags) and real people cut out of vtest.avi
  frames 0-450 by background subtraction, rescaled, flipped and re-dyed;
- crowds of overlapping people, people cut by the image border and
  close-ups up to ~90% of the image height;
- occluders in front of people (cars, benches, bins, low walls, hedges) and
  hard negatives that are never labelled (poles, lamps, sign posts, trees,
  bollards, columns, doors, mannequins, faces);
- contact and cast shadows, then camera effects (exposure, gamma, colour
  cast, blur, noise, JPEG 60-95).

Frames after :data:`~hkd.data.synth.sources.LAST_TRAIN_FRAME` (450) of
vtest.avi are reserved for evaluation and never read here.

Output (``generate``): ``images/000000.jpg ...`` and ``annotations.json``
(COCO, category 1 "pedestrian"). Per annotation: ``bbox`` = full-body box
clipped to the image, ``full_bbox`` unclipped, ``truncated`` 0/1,
``height`` = bbox height, ``vis_ratio`` = visible/full mask pixels (exact,
from the paint order), ``vis_bbox``, ``ignore`` (height < 20 px, crowd
boxes), ``iscrowd`` (dense small crowds become one ignore box), ``area``,
``source`` (procedural | real | crowd), ``crowd_group``. Statistics are in
``info.stats`` (see :func:`compute_stats`). Same seed, same bytes.
"""
from hkd.data.synth.config import SynthConfig
from hkd.data.synth.dataset import (compute_stats, contact_sheet, format_stats, generate, load, render_image,
                                    rng_for)
from hkd.data.synth.sources import LAST_TRAIN_FRAME, export_train_frames

__all__ = ["SynthConfig", "generate", "render_image", "rng_for", "load", "compute_stats", "format_stats",
           "contact_sheet", "export_train_frames", "LAST_TRAIN_FRAME"]
