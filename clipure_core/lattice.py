"""After an attack: round to 8 bits inside the eps-ball, notice where rounding undid the
attack, and re-attack those images on the 8-bit lattice for a few steps.

An attack returns float pixels; the image that is saved and evaluated has 8-bit pixels. An
adversarial example close to the decision boundary can be pushed back across it by the
rounding (at most half a level per pixel). `round_onto_lattice` judges the attacked model on
the float and on the rounded image, and for each image that fooled it only before rounding
takes up to `LATTICE_STEPS` steps of one 8-bit level from the rounded image, each rounded
back onto the lattice inside the eps-ball, and keeps the first point that fools the model
(else the highest-loss lattice point it saw, the rounded image included).

The model is judged with one forward per image and step, as given: a stochastic model is
judged on one draw (no EOT, no worst of k), and its gradient is one draw's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attacks import GRADIENT_FREE_METHODS, AttackConfig
from .pixels import LEVELS, quantize_in_ball

LATTICE_STEPS = 5  # re-attack steps on the 8-bit lattice, each of one 8-bit level


@dataclass(frozen=True)
class LatticeResult:
    """The 8-bit adversarial images and, per image, what rounding did to the attack.

    `fooled_before` / `fooled_after`: the attacked model was fooled by the float image / by
    its plain rounding; `repaired`: the lattice re-attack found an 8-bit image inside the ball
    that fools it, for an image rounding had undone (always False when not attempted).
    """

    adversarial: torch.Tensor
    fooled_before: list[bool]
    fooled_after: list[bool]
    repaired: list[bool]
    attempted: bool = True

    @property
    def undone(self) -> list[bool]:
        """Per image: fooled before rounding, not after it (before any re-attack)."""
        return [b and not a for b, a in zip(self.fooled_before, self.fooled_after, strict=True)]

    def image(self, index: int) -> dict:
        """One image's facts as JSON: the three judgements, and `repaired` (null when the
        re-attack was not attempted)."""
        return {
            "fooled_before_rounding": self.fooled_before[index],
            "fooled_after_rounding": self.fooled_after[index],
            "undone_by_rounding": self.undone[index],
            "repaired": self.repaired[index] if self.attempted else None,
        }


def round_onto_lattice(
    model: nn.Module,
    clean: torch.Tensor,
    raw: torch.Tensor,
    labels: torch.Tensor,
    norm: str,
    eps: float,
    *,
    targeted_label: int | None = None,
    repair: bool = True,
    steps: int = LATTICE_STEPS,
) -> LatticeResult:
    """Round `raw` (B, 3, H, W) onto the 8-bit lattice inside the `norm` eps-ball around the
    8-bit `clean` pixels (`quantize_in_ball`), and re-attack images rounding undid.

    `model` returns logits. Untargeted, it is fooled when its top class is not `labels`;
    with `targeted_label`, when it is that class. `repair=False` only judges (no re-attack).
    The whole batch is always passed to `model` (a batch-coupled model sees the same batch);
    only the undone images move. An image rounding left unchanged is never counted undone
    (on a random model its two judging forwards may simply disagree). Draws from the global
    RNG (seed the call for a stochastic model).
    """
    goal = labels if targeted_label is None else torch.full_like(labels, targeted_label)
    targeted = targeted_label is not None
    rounded = quantize_in_ball(clean, raw, norm, eps)
    before = _fooled(_logits(model, raw.detach()), goal, targeted)
    after = _fooled(_logits(model, rounded), goal, targeted)
    changed = (rounded != raw.detach()).flatten(1).any(dim=1)
    after = torch.where(changed, after, before)  # the same image: one judgement, not two draws
    undone = before & ~after
    repaired = torch.zeros_like(undone)
    if repair and bool(undone.any()):
        rounded, repaired = _lattice_attack(
            model, clean, rounded, goal, targeted, undone, norm, eps, steps
        )
    return LatticeResult(
        rounded, before.tolist(), after.tolist(), repaired.tolist(), attempted=repair
    )


def round_attack(
    model: nn.Module,
    clean: torch.Tensor,
    raw: torch.Tensor,
    labels: torch.Tensor,
    config: AttackConfig,
    repair: bool = True,
) -> LatticeResult:
    """`round_onto_lattice` for the output `raw` of the attack `config` (its norm, eps and
    target); a gradient-free attack's images are never re-attacked (the lattice steps would
    give it a gradient)."""
    return round_onto_lattice(
        model,
        clean,
        raw,
        labels,
        config.norm,
        config.eps,
        targeted_label=config.targeted_label,
        repair=repair and config.method not in GRADIENT_FREE_METHODS,
    )


def _lattice_attack(
    model: nn.Module,
    clean: torch.Tensor,
    start: torch.Tensor,
    goal: torch.Tensor,
    targeted: bool,
    moving: torch.Tensor,
    norm: str,
    eps: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `steps` lattice steps for the images in `moving`. Each keeps the first point that
    fools the model, else its highest-objective point (the start included). Returns the
    images and which of them fool the model."""
    x, repaired, moving = start.clone(), torch.zeros_like(moving), moving.clone()
    best, best_value = start.clone(), None
    for step in range(steps + 1):
        leaf, logits, objective = _forward(model, x, goal, targeted, with_graph=step < steps)
        value = objective.detach()
        fooled = _fooled(logits.detach(), goal, targeted) & moving
        if step > 0:  # the start is the rounded image, already judged not to fool
            repaired |= fooled
            moving &= ~fooled
        higher = moving if best_value is None else moving & (value > best_value)
        best = torch.where(_per_image(higher | fooled, x), x, best)
        best_value = value if best_value is None else best_value.maximum(value)
        if step == steps or not bool(moving.any()):
            break
        gradient = _gradient(objective, leaf)
        candidate = quantize_in_ball(clean, x + _one_level(gradient, norm), norm, eps)
        x = torch.where(_per_image(moving, x), candidate, x)
    return best, repaired


def _per_image(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *[1] * (like.dim() - 1))


def _forward(
    model: nn.Module, x: torch.Tensor, goal: torch.Tensor, targeted: bool, with_graph: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A leaf copy of `x`, the logits there and the attacker's objective per image (cross
    entropy of the true class, or minus that of the target), with their graph if asked."""
    with torch.enable_grad() if with_graph else torch.no_grad():
        leaf = x.detach().requires_grad_(with_graph)
        logits = model(leaf)
        loss = nn.functional.cross_entropy(logits.float(), goal, reduction="none")
    return leaf, logits, -loss if targeted else loss


def _gradient(objective: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """The pixel gradient of the summed objective (zero where none reaches the pixels)."""
    if not objective.requires_grad:
        return torch.zeros_like(leaf)
    found = torch.autograd.grad(objective.sum(), leaf, allow_unused=True)[0]
    return torch.zeros_like(leaf) if found is None else found.detach()


def _one_level(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """A step of one 8-bit level up the loss: L-inf, every pixel by its gradient's sign; L2,
    the gradient scaled so that its largest pixel moves one level (after rounding, the pixels
    whose gradient is at least half the largest move by one level)."""
    if norm == "linf":
        return gradient.sign() / LEVELS
    flat = gradient.flatten(1)
    largest = flat.abs().amax(dim=1, keepdim=True)
    scaled = torch.where(largest > 0, flat / largest.clamp_min(1e-30), torch.zeros_like(flat))
    return scaled.view_as(gradient) / LEVELS


@torch.no_grad()
def _logits(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return model(pixels)


def _fooled(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    top = logits.argmax(dim=-1)
    return top == goal if targeted else top != goal
