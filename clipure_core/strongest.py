"""The strongest point an attack saw, per image, and the runner that returns it.

An attack evaluates the model at many points (its iterates, restarts, targets, and the
attacks of a composite); what it should return per image is the strongest of them, not its
last iterate and never the clean image. A candidate point is scored from the forwards made
at it: a group of consecutive forwards on the same input (an EOT step's samples, or the
draws of `Witness.judge`) is judged together, as the evaluation judges an image:

- `fooled`: the fraction of those forwards whose top class is wrong (targeted: the target);
- `margin`: their mean margin towards that goal (the best wrong logit minus the true one;
  targeted: the target's logit minus the best other), positive when fooled.

On a deterministic model candidates compare lexicographically, fooled first, then the
higher margin: "a point that fools whenever any iterate fooled, else the highest-margin
iterate". A model is stochastic when two forwards of the clean batch differ (AutoAttack's
randomness check, made once per batch: `PROBE_FORWARDS`); then one forward's "fooled" is a
coin flip, so the candidates of one run of an attack (a restart, a target class, one attack
of a composite) rank by their mean margin alone (the EOT-averaged loss); after the run, each
image's best candidate is judged on `SETTLE_DRAWS` fresh forwards and replaces the point the
image keeps if it fools more of them (or as many, with a higher mean margin), as the
evaluation judges an image on its worst draws. The image counts as fooled, and is left alone
by later runs, only if its kept point fooled every one of them.

The margin is the one loss every attack's candidates are ranked by (APGD-CE's, APGD-T's and
Square's own losses differ), so that candidates of different attacks compare.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torchattacks
from torch import nn

PROBE_FORWARDS = 2  # forwards of the clean batch that tell a stochastic model
SETTLE_DRAWS = 10  # forwards judging each kept point of a stochastic model after a run


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


class _Kept:
    """Per image one point and its score (clean pixels and "none seen" until one is kept)."""

    def __init__(self, clean: torch.Tensor) -> None:
        self.points = clean.clone()
        self.fooled = torch.full((len(clean),), -1.0, device=clean.device)  # -1: none seen
        self.margin = torch.full((len(clean),), -torch.inf, device=clean.device)

    def keep(self, rows: torch.Tensor, mask: torch.Tensor, points, fooled, margin) -> None:
        chosen = rows[mask]
        self.points[chosen] = points[mask].to(self.points.dtype)
        self.fooled[chosen], self.margin[chosen] = fooled[mask], margin[mask]


class Strongest:
    """Per image the strongest candidate point offered so far (see the module docstring).

    On a stochastic model the candidates a run offers compete for `challenger`, and `promote`
    then sets each image's challenger, judged on fresh forwards, against the point it keeps.
    """

    def __init__(
        self, clean: torch.Tensor, labels: torch.Tensor, targeted: bool, stochastic: bool
    ) -> None:
        self.clean, self.labels = clean, labels
        self.targeted, self.stochastic = targeted, stochastic
        self.kept = _Kept(clean)
        self.challenger = _Kept(clean)

    @property
    def points(self) -> torch.Tensor:
        return self.kept.points

    def offer(self, rows: torch.Tensor, points: torch.Tensor, logits: torch.Tensor) -> None:
        """Candidates `points` of the images `rows`, seen with (draws, len(rows), C) `logits`.
        A candidate equal to its clean image is never kept."""
        fooled, margin = score(logits.float(), self.labels[rows], self.targeted)
        moved = (points != self.clean[rows]).flatten(1).any(dim=1)
        held = self.challenger if self.stochastic else self.kept
        better = margin > held.margin[rows]
        if not self.stochastic:
            better = (fooled > held.fooled[rows]) | ((fooled == held.fooled[rows]) & better)
        held.keep(rows, moved & better, points, fooled, margin)

    def challenged(self, rows: torch.Tensor) -> torch.Tensor:
        """The images of `rows` with a challenger waiting to be judged."""
        return rows[self.challenger.fooled[rows] >= 0]

    def promote(self, rows: torch.Tensor, logits: torch.Tensor) -> None:
        """Judge the challengers of `rows` by (draws, len(rows), C) `logits` made at them:
        each replaces the kept point if it fools more of its draws than the kept point did of
        its own, or as many with a higher mean margin. The challengers are then cleared."""
        fooled, margin = score(logits.float(), self.labels[rows], self.targeted)
        held_fooled, held_margin = self.kept.fooled[rows], self.kept.margin[rows]
        better = (fooled > held_fooled) | ((fooled == held_fooled) & (margin > held_margin))
        self.kept.keep(rows, better, self.challenger.points[rows], fooled, margin)
        self.challenger.fooled[rows], self.challenger.margin[rows] = -1.0, -torch.inf

    def unfooled(self) -> torch.Tensor:
        """Indices of the images whose kept point does not fool every forward judged at it
        (AutoAttack attacks these further; on a deterministic model: not fooled)."""
        return (self.kept.fooled < 1).nonzero().flatten()


class Witness(nn.Module):
    """`model`, watched: while `watching(rows)`, every forward on a batch of len(rows) images
    (image i of the batch being image rows[i]) is offered to `best` as candidate points."""

    def __init__(self, model: nn.Module, stochastic: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.stochastic = stochastic  # None: probe each batch (`start`)
        self.best: Strongest | None = None
        self._rows: torch.Tensor | None = None
        self._group: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self.train(model.training)  # torchattacks restores the wrapper's mode onto the model

    @torch.no_grad()
    def start(self, clean: torch.Tensor, labels: torch.Tensor, targeted: bool) -> None:
        """A new batch: whether the model is stochastic (probed unless the caller said so),
        and nothing seen yet."""
        stochastic = self.stochastic
        if stochastic is None:
            first, *others = (self.model(clean) for _ in range(PROBE_FORWARDS))
            stochastic = any(not torch.equal(first, other) for other in others)
        self.best = Strongest(clean, labels, targeted, stochastic)

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

    @torch.no_grad()
    def settle(self, rows: torch.Tensor) -> None:
        """After a run on the images `rows`: on a stochastic model, judge each image's best
        candidate of the run on `SETTLE_DRAWS` fresh forwards against the point it keeps."""
        if not self.best.stochastic:
            return
        rows = self.best.challenged(rows)
        if rows.numel():
            points = self.best.challenger.points[rows]
            self.best.promote(rows, torch.stack([self.model(points) for _ in range(SETTLE_DRAWS)]))

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
