"""torchattacks classes that return the strongest point they saw, and the random-noise control.

The `Strongest*` and `BestIterate*` classes run torchattacks' own attack loops against a
`strongest.Witness` (the model, watched) and return, per image, the strongest point of
`strongest.Strongest`: torchattacks' PGD returns its last iterate, and its APGD, APGD-T and
Square return the clean image wherever their own forwards never saw the image misclassified
(also when one noisy forward of a random defence said "right"). They attack only the images
the witness does not yet count as fooled, so that in a `StrongestRunner` later attacks work
on what earlier ones left, as in AutoAttack; there is no clean-accuracy pre-check (a
random defence could pass it by chance).

`ReleaseAPGD` / `ReleaseAPGDT` keep torchattacks' return rule for the release protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch
import torchattacks
from torch import nn

from .strongest import Witness


class _BestIterate:
    """Mixin for attacks that run on the whole batch at once (PGD, PGD-L2, EOT-PGD, FGSM, FAB):
    the attack runs on the images not yet fooled; with `watch`, every forward it makes is a
    candidate; its result (e.g. PGD's last iterate, which PGD itself never evaluates) is
    judged on its EOT samples (`eot_iter`, else one forward)."""

    watch = True
    model: Witness

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = self.model.best.unfooled()
        if rows.numel():
            with self.model.watching(rows) if self.watch else nullcontext():
                result = super().forward(images[rows], labels[rows])
            self.model.judge(result.detach(), rows, getattr(self, "eot_iter", 1))
            self.model.settle(rows)
        return self.model.best.points


class BestIteratePGD(_BestIterate, torchattacks.PGD):
    """torchattacks.PGD returning its strongest iterate."""


class BestIteratePGDL2(_BestIterate, torchattacks.PGDL2):
    """torchattacks.PGDL2 returning its strongest iterate."""


class BestIterateEOTPGD(_BestIterate, torchattacks.EOTPGD):
    """torchattacks.EOTPGD returning its strongest iterate (judged on its EOT samples)."""


class BestIterateFGSM(_BestIterate, torchattacks.FGSM):
    """torchattacks.FGSM; its one forward is at the clean image, so its step is judged."""


class JudgedFAB(_BestIterate, torchattacks.FAB):
    """torchattacks.FAB whose result is judged like every other candidate. Its forwards are
    not watched (they include Jacobian batches of other shapes)."""

    watch = False


class _StrongestRuns:
    """Mixin for APGD and APGD-T: torchattacks' restart (and target) loop, each run of
    `attack_single_run` on the images not yet fooled, with every forward watched. APGD
    evaluates each of its iterates, so nothing is judged twice."""

    model: Witness

    def _runs(self) -> Iterator[None]:
        yield from range(self.n_restarts)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        torch.random.manual_seed(self.seed)  # as torchattacks' perturb
        torch.cuda.random.manual_seed(self.seed)
        for _ in self._runs():
            rows = self.model.best.unfooled()
            if not rows.numel():
                break
            self._run(images, labels, rows)
            self.model.settle(rows)
        return self.model.best.points

    def _run(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """One run of `attack_single_run` on the images `rows`, its forwards watched."""
        with self.model.watching(rows):
            self.attack_single_run(images[rows], labels[rows])


class StrongestAPGD(_StrongestRuns, torchattacks.APGD):
    """torchattacks.APGD returning its strongest point (see the module docstring)."""


class StrongestAPGDT(_StrongestRuns, torchattacks.APGDT):
    """torchattacks.APGDT returning its strongest point over every target class."""

    def _runs(self) -> Iterator[None]:
        for target_class in range(2, self.n_target_classes + 2):
            self.target_class = target_class
            yield from range(self.n_restarts)

    def _run(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """At L2, one image at a time: torchattacks' (3.5.1) L2 update steps every image of a
        batch with the first image's step size, where APGD and the reference AutoAttack step
        each with its own (docs/reference-checks.md); in a batch of one they are the same.
        The random starts are drawn per image from the same seeded generator: other numbers
        than a batched run's draws, but on CPU for images of a multiple of 16 values (torch
        draws normal numbers in blocks of 16). L-inf steps each image with its own size: one
        batch."""
        if self.norm != "L2":
            super()._run(images, labels, rows)
            return
        for i in range(len(rows)):
            super()._run(images, labels, rows[i : i + 1])


class StrongestSquare(torchattacks.Square):
    """torchattacks.Square returning its strongest point: each restart's best query (Square's
    own `x_best`, never clean) is judged on one forward. Its queries are not watched (each
    asks a changing subset of the images)."""

    model: Witness

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        self.init_hyperparam(images)
        torch.random.manual_seed(self.seed)  # as torchattacks' perturb
        torch.cuda.random.manual_seed(self.seed)
        for _ in range(self.n_restarts):
            rows = self.model.best.unfooled()
            if not rows.numel():
                break
            _, best = self.attack_single_run(images[rows], labels[rows])
            self.model.judge(best, rows, 1)
            self.model.settle(rows)
        return self.model.best.points


class _AttackEveryImage:
    """Mixin: the pre-attack accuracy check of `perturb` sees every image as still correct.

    torchattacks' `perturb` asks `get_logits(x)` once, first, to find the images to attack;
    that one call is answered with logits whose top class is the label, so every image is
    attacked. All later calls reach the model, and `perturb` returns what torchattacks
    returns: the clean image where none of the attack's own forwards misclassified it.
    """

    _labels_for_check: torch.Tensor | None = None

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._labels_for_check = y
        try:
            return super().perturb(x, y, *args, **kwargs)
        finally:
            self._labels_for_check = None

    def get_logits(self, inputs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        labels = self._labels_for_check
        if labels is None:
            return super().get_logits(inputs, *args, **kwargs)
        self._labels_for_check = None
        return nn.functional.one_hot(labels, int(labels.max()) + 1).float()


class ReleaseAPGD(_AttackEveryImage, torchattacks.APGD):
    """The release protocol's APGD: every image attacked, torchattacks' return rule."""


class ReleaseAPGDT(_AttackEveryImage, torchattacks.APGDT):
    """The release protocol's APGD-T: every image attacked, torchattacks' return rule."""


class UniformNoise(torchattacks.attack.Attack):
    """Random noise of the attack's size: uniform in the L-inf ball, or uniform on the L2
    sphere. The control every attack must beat: it uses no information about the model."""

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 4 / 255) -> None:
        super().__init__("UniformNoise", model)
        self.norm, self.eps = norm, eps
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        if self.norm == "Linf":
            delta = (torch.rand_like(images) * 2 - 1) * self.eps
        else:
            direction = torch.randn_like(images)
            norms = direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = direction / norms * self.eps
        return (images + delta).clamp(0, 1).detach()
