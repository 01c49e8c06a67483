"""The strongest point an attack saw, per image, and the runner that returns it.

An attack evaluates the model at many points (its iterates, restarts, targets, and the
attacks of a composite); what it should return per image is the strongest of them, not its
last iterate and never the clean image. A candidate point is scored from the forwards made
at it: a group of consecutive forwards on the same input (an EOT step's samples, or the
draws of `Witness.judge`) is judged together, as the evaluation judges an image:

- `fooled`: the fraction of those forwards whose top class is wrong (targeted: the target);
- `margin`: their mean margin towards that goal (the best wrong logit minus the true one;
  targeted: the target's logit minus the best other), positive when fooled.

Candidates compare lexicographically: more of the forwards fooled first, then the higher
margin. On a deterministic model that is "fooling whenever any iterate fooled, else the
highest-margin iterate"; on a stochastic one a single lucky forward cannot stand for a point
that an EOT-averaged judgement would rank below another. The margin is the one loss every
attack's candidates are ranked by (APGD-CE's, APGD-T's and Square's own losses differ), so
that candidates of different attacks compare.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torchattacks
from torch import nn


def score(
    logits: torch.Tensor, labels: torch.Tensor, targeted: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (fooled fraction, mean margin) of (draws, N, C) `logits`: see the module."""
    goal = labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    own = logits.gather(-1, goal).squeeze(-1)
    others = logits.scatter(-1, goal, -torch.inf).amax(dim=-1)
    top = logits.argmax(dim=-1)
    if targeted:
        fooled, margin = top == labels, own - others
    else:
        fooled, margin = top != labels, others - own
    return fooled.float().mean(dim=0), margin.mean(dim=0)


class Strongest:
    """Per image the best candidate point offered so far (clean pixels until one is)."""

    def __init__(self, clean: torch.Tensor, labels: torch.Tensor, targeted: bool) -> None:
        self.clean, self.labels, self.targeted = clean, labels, targeted
        self.points = clean.clone()
        self.fooled = torch.full((len(labels),), -1.0, device=clean.device)  # -1: none seen
        self.margin = torch.full((len(labels),), -torch.inf, device=clean.device)

    def offer(self, rows: torch.Tensor, points: torch.Tensor, logits: torch.Tensor) -> None:
        """Candidates `points` of the images `rows`, seen with (draws, len(rows), C) `logits`.
        A candidate equal to its clean image is never kept."""
        fooled, margin = score(logits.float(), self.labels[rows], self.targeted)
        moved = (points != self.clean[rows]).flatten(1).any(dim=1)
        held_fooled, held_margin = self.fooled[rows], self.margin[rows]
        better = (fooled > held_fooled) | ((fooled == held_fooled) & (margin > held_margin))
        keep = moved & better
        chosen = rows[keep]
        self.points[chosen] = points[keep].to(self.points.dtype)
        self.fooled[chosen], self.margin[chosen] = fooled[keep], margin[keep]

    def unfooled(self) -> torch.Tensor:
        """Indices of the images whose best point does not fool every forward judged at it
        (AutoAttack attacks these further; on a deterministic model: not fooled)."""
        return (self.fooled < 1).nonzero().flatten()


class Witness(nn.Module):
    """`model`, watched: while `watching(rows)`, every forward on a batch of len(rows) images
    (image i of the batch being image rows[i]) is offered to `best` as candidate points."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.best: Strongest | None = None
        self._rows: torch.Tensor | None = None
        self._group: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self.train(model.training)  # torchattacks restores the wrapper's mode onto the model

    def start(self, clean: torch.Tensor, labels: torch.Tensor, targeted: bool) -> None:
        self.best = Strongest(clean, labels, targeted)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixels)
        if self._rows is not None and pixels.shape[0] == len(self._rows):
            self._see(pixels, logits.detach())
        return logits

    @contextmanager
    def watching(self, rows: torch.Tensor) -> Iterator[None]:
        self._flush()
        self._rows = rows
        try:
            yield
        finally:
            self._flush()
            self._rows = None

    @torch.no_grad()
    def judge(self, points: torch.Tensor, rows: torch.Tensor, draws: int) -> None:
        """Offer `points` (images `rows`), judged on `draws` forwards (a point no attack
        forward saw, such as an attack's last iterate)."""
        with self.watching(rows):
            for _ in range(draws):
                self(points)

    def _see(self, pixels: torch.Tensor, logits: torch.Tensor) -> None:
        if self._group is not None and torch.equal(self._group[0], pixels):
            self._group[1].append(logits)  # another draw at the same point (EOT)
            return
        self._flush()
        self._group = (pixels.detach().clone(), [logits])  # attacks edit iterates in place

    def _flush(self) -> None:
        if self._group is not None and self._rows is not None and self.best is not None:
            points, draws = self._group
            self.best.offer(self._rows, points, torch.stack(draws))
        self._group = None


class StrongestRunner(torchattacks.attack.Attack):
    """Runs `attacks` (all built on `witness`) in order on one batch and returns, per image,
    the strongest point any of them saw. Each attack works on the images not yet fooled
    (`Strongest.unfooled`), as AutoAttack runs its later attacks on what is left."""

    def __init__(self, witness: Witness, attacks: Sequence[torchattacks.attack.Attack]) -> None:
        super().__init__("StrongestRunner", witness)
        self.witness = witness
        self.attacks = list(attacks)
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        self.witness.start(images, labels, self.targeted)
        try:
            for attack in self.attacks:
                attack(images, labels)
            return self.witness.best.points.detach()
        finally:
            self.witness.best = None
