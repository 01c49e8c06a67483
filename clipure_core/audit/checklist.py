"""The published checklists' checks (Carlini et al. 2019, Pintor et al. 2022, Zimmermann et al.
2022, Athalye et al. 2018) as pure functions of what the audit measured.

Each returns a `Check`; `checklist_runs.py` makes the measurements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

from .checks import STATUSES, Check, _already_wrong, _eps_text, _titles, direction_grade
from .gradients import GradientStats

# loss_progress: a rise below this (relative to max(1, |start|)) is round-off (float16: ~1e-3)
LOSS_TOLERANCE = 1e-3
LATE_FRACTION = 0.2  # "the last steps": the final 20 % of them (at least one)
LATE_SHARE = 0.1  # still improving: the last steps brought more than 10 % of the gain
PROBABILITY_RISE = 0.05  # eps_monotone: a true-class probability rise that is not noise
COUPLING_TOLERANCE = 1e-4  # batch_coupling: relative change beyond float32 round-off


def _where(condition: str | None, model: str) -> dict:
    return {"condition": condition, "model": model}


def late_steps(steps: int) -> int:
    """How many of an attack's last steps count as "the last steps"."""
    return max(1, int(steps * LATE_FRACTION))


def loss_progress(
    condition: str,
    model: str,
    title: str,
    losses: Sequence[float],
    fooled: bool,
    zero_gradient: bool = False,
) -> Check:
    """`losses`: the attack's loss at its start (step 0), after every step, and at its end.

    Fail: the loss never rose above its start, or the audit measured an exactly-zero pixel
    gradient for this attack (`zero_gradient`: a rise is then the defence's randomness, one
    draw per step, not the attack's doing). Warn: the model was not fooled and the last steps
    still brought a real share of the gain (incomplete optimisation, Pintor et al. 2022).
    Pass otherwise."""
    start, end, best = losses[0], losses[-1], max(losses)
    gain = best - start
    late = late_steps(len(losses) - 1)
    late_gain = max(losses[-late:]) - max(losses[:-late])
    value = {
        "start": start,
        "best": best,
        "end": end,
        "late_share": max(late_gain, 0.0) / gain if gain > 0 else None,
    }
    args = ("loss_progress",)
    if gain <= LOSS_TOLERANCE * max(1.0, abs(start)):
        return Check(
            *args,
            "fail",
            value,
            f"{title}: the attack's loss never rose above its value at step 0 ({start:.4g}), "
            "so the attack did nothing.",
            **_where(condition, model),
        )
    if zero_gradient:
        return Check(
            *args,
            "fail",
            value,
            f"{title}: the gradient that reaches the pixels is exactly 0, so the attack could "
            f"not steer; its loss rose from {start:.4g} to {best:.4g} only by chance.",
            **_where(condition, model),
        )
    if not fooled and late_gain > LATE_SHARE * gain:
        return Check(
            *args,
            "warn",
            value,
            f"{title}: the loss was still rising in the attack's last {late} step(s) "
            f"({late_gain / gain:.0%} of its gain), so more steps might fool it: the "
            "optimisation was incomplete.",
            **_where(condition, model),
        )
    verdict = "fooled the model" if fooled else "levelled off before the end"
    return Check(
        *args,
        "pass",
        value,
        f"{title}: the attack raised its loss from {start:.4g} to {best:.4g} and {verdict}.",
        **_where(condition, model),
    )


def convergence(
    condition: str,
    model: str,
    title: str,
    fooled: bool,
    longer: Mapping[str, bool] | None,
    steps: int,
) -> Check:
    """`longer`: outcome of each longer run (e.g. {"2x steps": True, "restart": False});
    None when none ran because the audit's own attack already fooled the model.

    Fail: more effort fooled a model the audit's attack did not (its row overstates
    robustness). Warn: the audit's attack fooled it and a longer run did not (unstable)."""
    value = {"steps": steps, "fooled": fooled, "longer": dict(longer or {})}
    args = ("convergence",)
    if longer is None:
        return Check(
            *args,
            "pass",
            value,
            f"{title}: the {steps}-step attack already fooled it, so more effort cannot show "
            "more weakness (not re-run).",
            **_where(condition, model),
        )
    won = [name for name, f in longer.items() if f and not fooled]
    lost = [name for name, f in longer.items() if fooled and not f]
    if won:
        return Check(
            *args,
            "fail",
            value,
            f"{title}: the {steps}-step attack did not fool it but {', '.join(won)} did, so "
            "the attack had not converged and this row overstates robustness.",
            **_where(condition, model),
        )
    if lost:
        return Check(
            *args,
            "warn",
            value,
            f"{title}: the {steps}-step attack fooled it but {', '.join(lost)} did not, so "
            "the outcome is unstable.",
            **_where(condition, model),
        )
    return Check(
        *args,
        "pass",
        value,
        f"{title}: {', '.join(longer)} gave the same outcome as the {steps}-step attack.",
        **_where(condition, model),
    )


def unbounded(
    condition: str,
    model: str,
    title: str,
    clean_correct: bool,
    results: Sequence[tuple[float, bool]],
    norm: str,
) -> Check:
    """`results`: (eps, fooled) at the audit's eps, then growing eps. Pass once one fools
    it; fail when even the largest did not (Athalye et al. 2018: an unbounded attack must
    reach ~100 %)."""
    args = ("unbounded",)
    if not clean_correct:
        return Check(
            *args,
            "pass",
            0.0,
            f"{title}: the clean photo is already misclassified (no perturbation needed).",
            **_where(condition, model),
        )
    fooled_at = next((eps for eps, fooled in results if fooled), None)
    if fooled_at is None:
        return Check(
            *args,
            "fail",
            None,
            f"{title}: even a perturbation of {_eps_text(results[-1][0], norm)} did not fool "
            "it; an attack that large should always win, so this attack is broken here, not "
            "the model robust.",
            **_where(condition, model),
        )
    return Check(
        *args,
        "pass",
        fooled_at,
        f"{title}: the attack fools it once the perturbation may reach "
        f"{_eps_text(fooled_at, norm)}.",
        **_where(condition, model),
    )


def eps_monotone(
    condition: str,
    model: str,
    title: str,
    results: Sequence[tuple[float, bool, float]],
    norm: str,
) -> Check:
    """`results`: (eps, correct, true-class probability) with growing eps, the clean photo
    first (eps 0). Fail: right again at a larger eps after being fooled at a smaller one.
    Warn: while still right, the true-class probability rose by more than 0.05 with eps."""
    value = [list(row) for row in results]
    args = ("eps_monotone",)
    fooled_eps = None
    for eps, correct, _ in results:
        if not correct and fooled_eps is None:
            fooled_eps = eps
        elif correct and fooled_eps is not None:
            return Check(
                *args,
                "fail",
                value,
                f"{title}: fooled at {_eps_text(fooled_eps, norm)} but right again at "
                f"{_eps_text(eps, norm)}: a larger perturbation must not help the model, so "
                "the attack is unreliable here.",
                **_where(condition, model),
            )
    still_right = [(eps, p) for eps, correct, p in results if correct]
    for (low, p_low), (high, p_high) in pairwise(still_right):
        if p_high > p_low + PROBABILITY_RISE:
            return Check(
                *args,
                "warn",
                value,
                f"{title}: the true class's probability rose from {p_low:.0%} at "
                f"{_eps_text(low, norm)} to {p_high:.0%} at {_eps_text(high, norm)}: a larger "
                "perturbation should not make the attack do worse.",
                **_where(condition, model),
            )
    return Check(
        *args,
        "pass",
        value,
        f"{title}: larger perturbations never helped the model (checked at {len(results)} "
        "sizes, the clean photo included).",
        **_where(condition, model),
    )


def transfer_vs_white_box(
    model: str,
    title: str,
    clean_correct: bool,
    transfer_fooled: bool,
    white_box_fooled: Mapping[str, bool],
    condition_titles: Mapping[str, str],
) -> Check:
    """Fail when the image crafted on undefended CLIP fooled the defence and a white-box
    attack on the defence itself did not."""
    args = ("transfer_vs_white_box",)
    if not clean_correct:
        return _already_wrong(*args, model, title)
    beaten = [c for c, fooled in white_box_fooled.items() if transfer_fooled and not fooled]
    if beaten:
        return Check(
            *args,
            "fail",
            beaten,
            f"{title}: the image made to fool undefended CLIP fooled it where "
            f"{_titles(beaten, condition_titles)}, which attacked the defence itself, did "
            "not, so those attacks' gradients were misleading.",
            model=model,
        )
    return Check(
        *args,
        "pass",
        beaten,
        f"{title}: the transfer image did no better than the attacks on the defence itself.",
        model=model,
    )


def binarization(
    condition: str,
    model: str,
    title: str,
    found: bool | None,
    margin: float | None,
    control_margin: float | None,
) -> Check:
    """The binarization test (Zimmermann et al. 2022): the model was replaced by a two-class
    one with a known adversarial point inside the ball. `margin`: the attack's best point on
    the scale where the clean photo is -0.5 and the known point +0.5 (> 0: found);
    `control_margin`: a random point's. `found` None: not run (the audit's attack already
    fooled the model)."""
    value = {"found": found, "margin": margin, "control_margin": control_margin}
    args = ("binarization",)
    if found is None:
        return Check(
            *args,
            "pass",
            value,
            f"{title}: the audit's attack already fooled it, so it is strong enough here "
            "(not re-tested).",
            **_where(condition, model),
        )
    if control_margin is not None and control_margin > 0:
        return Check(
            *args,
            "warn",
            value,
            f"{title}: a random point already crossed the test's boundary, so this test "
            "cannot tell a strong attack from a lucky one here.",
            **_where(condition, model),
        )
    if not found:
        return Check(
            *args,
            "fail",
            value,
            f"{title}: the attack missed an adversarial example known to exist inside the "
            "ball (binarization test), so it is too weak for this defence and its row "
            "overstates robustness.",
            **_where(condition, model),
        )
    return Check(
        *args,
        "pass",
        value,
        f"{title}: the attack found the adversarial example known to exist inside the ball "
        "(binarization test).",
        **_where(condition, model),
    )


def batch_coupling(
    model: str,
    title: str,
    relative_change: float,
    prediction_changed: bool,
    random_model: bool,
    coupled: Sequence[GradientStats] = (),
    norm: str = "linf",
) -> Check:
    """Two measurements in batches of two. The output: fail when the defence's purified
    embedding for the photo changes with its partner (beyond float32 round-off, or its
    prediction). The gradient (`coupled`, one row per random partner, for defences with the
    release's batch-coupled step): the photo's pixel gradient under that step at batch size 2
    (float32, inner gradient held constant) against the exact one, averaged over the pairs and
    graded as `gradient_direction` grades (L-inf progress, L2 cosine). Warn when the model is
    random (the draws differ)."""
    value = {
        "relative_change": relative_change,
        "prediction_changed": prediction_changed,
        "coupled_gradient": _coupled_value(coupled) if coupled else None,
    }
    args = ("batch_coupling",)
    if random_model:
        return Check(
            *args,
            "warn",
            value,
            f"{title} is random, so a change with its batch partner cannot be told apart from "
            "a change of draws.",
            model=model,
        )
    found = [_output_coupling(title, relative_change, prediction_changed)]
    if coupled:
        found.append(_gradient_coupling(title, coupled, norm))
    status = max((s for s, _ in found), key=STATUSES.index)
    return Check(*args, status, value, " ".join(text for _, text in found), model=model)


def _mean(values: Sequence[float | None]) -> float:
    """The mean, with an exactly-zero gradient's direction counted as 0 (no progress)."""
    return sum(v or 0.0 for v in values) / len(values)


def _coupled_value(rows: Sequence[GradientStats]) -> dict:
    compared = all(row.norm == 0 or row.cos_to_full is not None for row in rows)
    fields = ("cos_to_full", "sign_agreement_with_full", "linf_progress")
    means = {f: _mean([getattr(row, f) for row in rows]) if compared else None for f in fields}
    return {
        "partners": f"{len(rows)} random images, one pair each",
        **means,
        "smallest_norm": min(row.norm for row in rows),
        "per_pair": {f: [getattr(row, f) for row in rows] for f in fields[::2]},
    }


def _output_coupling(title: str, change: float, prediction_changed: bool) -> tuple[str, str]:
    if prediction_changed or change > COUPLING_TOLERANCE:
        changed = "and its prediction " if prediction_changed else ""
        return (
            "fail",
            f"{title}: the photo's purified embedding {changed}changed by {change:.1e} "
            "(relative) when another image shared its batch, so batched attacks and "
            "evaluations see a different model than one image alone.",
        )
    return "pass", f"{title}: the photo's output does not depend on the other images in its batch."


def _gradient_coupling(title: str, rows: Sequence[GradientStats], norm: str) -> tuple[str, str]:
    where = (
        "With the release's step (normalised over the whole batch; float32, inner gradient "
        f"held constant) and a random image beside the photo in a batch of two ({len(rows)} "
        "pairs), "
    )
    summary = _coupled_value(rows)
    if all(row.norm == 0 for row in rows):
        return "fail", f"{where}the photo's gradient is exactly 0: an attack cannot move."
    value = summary["linf_progress" if norm == "linf" else "cos_to_full"]
    if value is None:
        return "warn", f"{where}the photo's gradient cannot be compared: the exact one is 0."
    if norm == "linf":
        measured = (
            f"a step along the signs of the photo's gradient gains {value:.0%} of what the "
            "exact gradient's signs gain (mean over the pairs)"
        )
    else:
        measured = f"the photo's gradient has cosine {value:.2f} with the exact one (mean)"
    status, verdict = direction_grade(value)
    text = f"{where}{measured}, {verdict}."
    if status == "fail":
        text += (
            " The release evaluated images in pairs, so its gradient attacks followed noise, "
            "not the defence's gradient."
        )
    return status, text
