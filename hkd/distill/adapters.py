"""Adapters (connectors) that bring a student level to the teacher's shape.

Built from :func:`hkd.distill.plan.plan_level` (the table of which adapter each
role gets is there), per level present in both models. Where shapes are equal
there is *no* adapter (an identity), so a student that equals its teacher has
exactly zero imitation loss.

Fitting: by default (``distill.adapters.fit: least_squares``) the distiller calls
:meth:`LevelAdapter.fit_least_squares` at every step before the loss, which sets
the conv / linear weights to the ridge least-squares map from the student's
tensor to the teacher's over running second moments of recent batches; the
weights then carry no gradient and only the student learns through them. Under
DistributedDataParallel the batch moments are summed over all ranks first, so
every rank fits the adapter of the global batch. With
``fit: gradient`` they are ordinary parameters trained by the optimiser. A
diagnostic on the first benchmark runs showed why least squares is the default:
after 400 SGD steps the trained adapters still left a normalised error of
0.88–1.14 (no better than predicting zeros), whereas the least-squares map of
the same student features reached 0.21–0.56 on held-out images, so imitation
through gradient-trained adapters fed the student mostly noise.

Initialisation: the 1×1 conv / linear weights are drawn from
``N(0, 1/C_s)`` (Kaiming, ``fan_in``, linear gain) and the bias is 0, so at
step 0 an adapter passes the student's signal into the teacher's channel space
with its second moment preserved — neither vanishing (all-zero adapters give
no gradient to the student through the loss, only to the adapter) nor
exploding. Where shapes are equal there is *no* adapter (an identity), so a
student that equals its teacher has exactly zero imitation loss.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hkd.distill.plan import NO_LOSS, NOT_COMPARABLE, adapter_plan, comparable_levels, plan_level  # noqa: F401
from hkd.models.hierarchy import HierarchySpec, Level
from hkd.models.ops import lstsq_moments, ridge_solve


def adapter_key(level_name: str) -> str:
    """ModuleDict key of a level (``neck.p3`` → ``neck_p3``: dots are not allowed in keys)."""
    return level_name.replace(".", "_")


class LevelAdapter(nn.Module):
    """Maps a student level tensor to the teacher's shape.

    Args:
        channel: ``nn.Identity``, a 1×1 ``nn.Conv2d`` or an ``nn.Linear``.
        resize: bilinearly resize maps whose spatial size differs from the teacher's.
    """

    def __init__(self, channel: nn.Module, *, resize: bool = False) -> None:
        super().__init__()
        self.channel = channel
        self.resize = resize

    @property
    def learned(self) -> bool:
        """Whether there is a channel map to fit (a 1×1 conv or a linear layer)."""
        return isinstance(self.channel, (nn.Conv2d, nn.Linear))

    def use_least_squares(self) -> "LevelAdapter":
        """Switch to closed-form fitting: the weights stop requiring grad and running moments
        (saved with the adapter's state) are kept for :meth:`fit_least_squares`."""
        if self.learned:
            self.channel.requires_grad_(False)
            inputs = self.channel.weight.shape[1] + 1
            outputs = self.channel.weight.shape[0]
            self.register_buffer("moment_xx", torch.zeros(inputs, inputs, dtype=torch.float64))
            self.register_buffer("moment_xy", torch.zeros(inputs, outputs, dtype=torch.float64))
            self.register_buffer("fits", torch.zeros((), dtype=torch.long))
        return self

    @torch.no_grad()
    def fit_least_squares(self, student: Tensor, teacher: Tensor, momentum: float = 0.9, ridge: float = 1e-3) -> None:
        """Update the running moments with this batch and set the weights to the ridge solution.

        student: (N, C_s, h, w) maps, (K, C_s, 7, 7) regions or (K, D_s) embeddings;
        teacher: the same with the teacher's channels (maps at the teacher's h×w; a 1×1
        conv and a bilinear resize commute, so the student is resized first).
        ``ridge`` is relative to the mean variance of the student's channels.
        """
        if not self.learned or not hasattr(self, "moment_xx"):
            raise RuntimeError("fit_least_squares needs a conv/linear adapter switched by use_least_squares()")
        if student.dim() == 4:
            if tuple(student.shape[-2:]) != tuple(teacher.shape[-2:]):
                student = F.interpolate(student, size=tuple(teacher.shape[-2:]), mode="bilinear", align_corners=False)
            x = student.permute(0, 2, 3, 1).reshape(-1, student.shape[1])
            y = teacher.permute(0, 2, 3, 1).reshape(-1, teacher.shape[1])
        else:
            x, y = student, teacher
        xx, xy, count = _global_moments(*lstsq_moments(x, y), len(x))
        if count == 0:
            return
        xx, xy = xx / count, xy / count
        if int(self.fits) == 0:
            self.moment_xx.copy_(xx)
            self.moment_xy.copy_(xy)
        else:
            self.moment_xx.mul_(momentum).add_(xx, alpha=1 - momentum)
            self.moment_xy.mul_(momentum).add_(xy, alpha=1 - momentum)
        self.fits += 1
        weight, bias = ridge_solve(self.moment_xx, self.moment_xy, ridge)
        self.channel.weight.copy_(weight.to(self.channel.weight.dtype).reshape(self.channel.weight.shape))
        if self.channel.bias is not None:
            self.channel.bias.copy_(bias.to(self.channel.bias.dtype))

    def forward(self, x: Tensor, size: tuple[int, int] | None = None, *, channels: bool = True) -> Tensor:
        """x: student tensor; size: the teacher's (H, W) for maps; channels=False skips the conv."""
        if channels:
            x = self.channel(x)
        if self.resize and size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x


def _global_moments(xx: Tensor, xy: Tensor, count: int) -> tuple[Tensor, Tensor, int]:
    """The sums ``xᵀx``, ``xᵀy`` and row count over every process of a distributed run.

    Under DistributedDataParallel each rank sees its share of the global batch; summing
    the unnormalised moments (and counts) before the solve makes every rank fit the same
    adapter, the one a single process would fit on the whole batch. Every rank must call
    this for the same levels in the same order (the distiller fits the active terms' levels
    in config order, which does not depend on the rank), also with no rows.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return xx, xy, count
    packed = torch.cat([xx.reshape(-1), xy.reshape(-1), xx.new_tensor([float(count)])])
    dist.all_reduce(packed)
    n_xx = xx.numel()
    return (packed[:n_xx].reshape(xx.shape), packed[n_xx:-1].reshape(xy.shape), int(packed[-1].round()))


def _init(layer: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="linear")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _adapter(teacher: Level, student: Level) -> tuple[bool, str, LevelAdapter | None]:
    """(comparable, description, the adapter module or None) for one level present in both."""
    plan = plan_level(teacher, student)
    if not plan.comparable:
        return False, plan.text, None
    channel: nn.Module = nn.Identity()
    if plan.channel == "conv":
        channel = _init(nn.Conv2d(student.channels, teacher.channels, kernel_size=1))
    elif plan.channel == "linear":
        channel = _init(nn.Linear(student.channels, teacher.channels))
    return True, plan.text, LevelAdapter(channel, resize=plan.resize)


def build_adapters(teacher_spec: HierarchySpec, student_spec: HierarchySpec, level_names) -> nn.ModuleDict:
    """A :class:`LevelAdapter` per level in ``level_names``, keyed by :func:`adapter_key`.

    Raises:
        ValueError: a level is missing from one spec or not comparable.
    """
    adapters = nn.ModuleDict()
    for name in level_names:
        missing = [who for who, spec in (("teacher", teacher_spec), ("student", student_spec)) if name not in spec]
        if missing:
            raise ValueError(f"level {name!r} is not in the {' and '.join(missing)} spec; "
                             f"levels in both: {comparable_levels(teacher_spec, student_spec)}")
        comparable, text, adapter = _adapter(teacher_spec[name], student_spec[name])
        if not comparable:
            raise ValueError(f"level {name!r} cannot be distilled between these models: {text}")
        adapters[adapter_key(name)] = adapter
    return adapters
