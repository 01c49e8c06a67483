"""The robustness curve of one photo: every model's true-class probability and verdict against
the attack's size, one attack per eps of a fixed ladder (`Playground.run` at each eps)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from PIL import Image

from .attacks import MAX_EPS, AttackConfig
from .errors import InputError
from .pipeline import CheckedRequest, Playground, check_request
from .purifiers import check_defense, model_title

# eps in the units people quote: L-inf in /255, L2 in [0, 1] pixel units. The L2 ladder
# doubles like the L-inf one and puts the app's default L2 eps (0.5) where L-inf 4/255 sits.
LADDERS: dict[str, tuple[float, ...]] = {
    "linf": (0, 1, 2, 4, 8, 16),
    "l2": (0, 0.125, 0.25, 0.5, 1, 2),
}
_SCALE = {"linf": 1 / 255, "l2": 1.0}
# on_progress(done, total, description), after every model query of every attack
CurveProgress = Callable[[int, int, str], None]


def eps_ladder(norm: str) -> list[float]:
    """The curve's eps in pixel units (L-inf 4/255 = 0.0157), 0 first."""
    if norm not in LADDERS:
        raise InputError(f"norm {norm!r}: use linf or l2.")
    return [value * _SCALE[norm] for value in LADDERS[norm]]


def eps_text(norm: str, index: int) -> str:
    """How eps number `index` of the ladder is shown ('4/255', '0.5')."""
    value = LADDERS[norm][index]
    return f"{value:g}/255" if norm == "linf" and value else f"{value:g}"


def ladder_attacks(attack: AttackConfig) -> list[AttackConfig]:
    """`attack` at each non-zero eps of its norm's ladder; an explicit step size scales with
    eps (the same step relative to eps as the page's attack), up to the largest allowed."""
    attacks = []
    for eps in eps_ladder(attack.norm)[1:]:
        alpha = attack.alpha
        if alpha is not None:
            alpha = min(alpha * eps / attack.eps, MAX_EPS[attack.norm])
        attacks.append(dataclasses.replace(attack, eps=eps, alpha=alpha))
    return attacks


def _attacked(threat: str, defenses: Sequence[str]) -> list[str | None]:
    """The defence of each model each eps attacks: None for undefended CLIP, and, unless the
    threat is `transfer`, each column's (a column on another backbone is DEFENSE@BACKBONE,
    `none` for no defence)."""
    columns = defenses if threat != "transfer" else []
    defended = [name.partition("@")[0] for name in columns]
    return [None, *(None if name == "none" else name for name in defended)]


def _queries(attack: AttackConfig, name: str | None, num_labels: int) -> int:
    stochastic = name is not None and check_defense(name).stochastic
    return attack.estimated_queries(num_labels, stochastic=stochastic)


def curve_queries(
    attack: AttackConfig, threat: str, defenses: Sequence[str], num_labels: int
) -> int:
    """Model forwards of the whole curve at most (progress, the app's budget): the attack's
    own estimate for each attacked model at each non-zero eps."""
    per_eps = sum(_queries(attack, name, num_labels) for name in _attacked(threat, defenses))
    return per_eps * (len(LADDERS[attack.norm]) - 1)


def check_curve(
    labels: str | Sequence[str],
    attack: AttackConfig,
    threat: str = "transfer",
    defenses: Iterable[str] = ("clipure_cos",),
    seed: int = 0,
    true_label: str | None = None,
    target_label: str | None = None,
    max_queries: int | None = None,
    defense_settings: Mapping[str, Mapping] | None = None,
) -> tuple[CheckedRequest, int]:
    """Refuse a curve without the model (InputError): what `Playground.run` refuses, and
    more than `max_queries` model queries, each weighed by what a query through its model
    costs (`Purifier.query_cost`: CLIPure-Diff runs its prior per step). Returns the checked
    request and the estimated model queries."""
    request = check_request(labels, attack, threat, defenses, seed, true_label, target_label)
    total = curve_queries(attack, threat, request.defenses, len(request.labels))
    settings, rungs = defense_settings or {}, len(LADDERS[attack.norm]) - 1
    attacked = _attacked(threat, request.defenses)
    weights = [
        1.0 if name is None else check_defense(name).query_cost(settings.get(name) or {})
        for name in attacked
    ]
    cost = rungs * sum(
        weight * _queries(attack, name, len(request.labels))
        for name, weight in zip(attacked, weights, strict=True)
    )
    if max_queries is not None and cost > max_queries:
        costly = {model_title(n): w for n, w in zip(attacked, weights, strict=True) if w != 1}
        counts = "".join(
            f"; a query through {title} counts as {weight:g}" for title, weight in costly.items()
        )
        raise InputError(
            f"this robustness curve needs about {round(cost):,} model queries ({rungs} attacks"
            f"{counts}), more than the {max_queries:,} allowed: use fewer attack steps, fewer "
            "labels or the transfer threat (one attacked model)."
        )
    return request, total


def robustness_curve(
    playground: Playground,
    image: Image.Image,
    labels: str | Sequence[str],
    attack: AttackConfig | None = None,
    threat: str = "transfer",
    defenses: Iterable[str] = ("clipure_cos",),
    seed: int = 0,
    true_label: str | None = None,
    target_label: str | None = None,
    defense_settings: Mapping[str, Mapping] | None = None,
    on_progress: CurveProgress | None = None,
    max_queries: int | None = None,
) -> dict:
    """Attack `image` at every eps of the ladder of `attack.norm` (the attack's own eps is
    replaced) and report, per model, the true class's probability and whether the model is
    still right; eps 0 is the clean prediction. The same seed gives the same curve.

    Refused (InputError, before any model work) like `Playground.run`, and when the
    estimated model queries exceed `max_queries`.
    """
    started = time.perf_counter()
    attack = attack or AttackConfig()
    request, total = check_curve(
        labels,
        attack,
        threat,
        defenses,
        seed,
        true_label,
        target_label,
        max_queries,
        defense_settings,
    )
    results, done = [], 0
    for index, config in enumerate(ladder_attacks(attack), start=1):
        stage = f"robustness curve: eps {eps_text(attack.norm, index)}"

        def on_query(count: int, before: int = done, stage: str = stage) -> None:
            if on_progress is not None:
                on_progress(min(before + count, total), total, stage)

        results.append(
            playground.run(
                image,
                labels,
                config,
                threat=threat,
                defenses=request.defenses,
                seed=seed,
                true_label=true_label,
                target_label=target_label,
                defense_settings=defense_settings,
                on_query=on_query,
            )
        )
        done = total * index // (len(LADDERS[attack.norm]) - 1)
    if on_progress is not None:
        on_progress(total, total, "robustness curve: done")
    return _curve_dict(results, attack, threat, target_label, seed, total, started)


def _curve_dict(
    results: list,
    attack: AttackConfig,
    threat: str,
    target_label: str | None,
    seed: int,
    total: int,
    started: float,
) -> dict:
    """The curve's JSON from the run at each non-zero eps (eps 0: the first run's clean
    probabilities)."""
    first = results[0]
    truth = first.labels.index(first.true_label)
    rows = [first.probabilities["clean"]] + [r.probabilities["adversarial"] for r in results]
    models = {}
    for model in first.models:
        probabilities = [row[model] for row in rows]
        predictions = [first.labels[max(range(len(p)), key=p.__getitem__)] for p in probabilities]
        models[model] = {
            "true_probability": [p[truth] for p in probabilities],
            "prediction": predictions,
            "correct": [prediction == first.true_label for prediction in predictions],
        }
    settings = first.settings["attack"]
    return {
        "norm": attack.norm,
        "eps": eps_ladder(attack.norm),
        "eps_text": [eps_text(attack.norm, i) for i in range(len(LADDERS[attack.norm]))],
        "labels": first.labels,
        "true_label": first.true_label,
        "threat": threat,
        "method": attack.method,
        "steps": settings["steps"],
        "eot_samples": attack.eot_samples,
        "target_label": target_label,
        "seed": seed,
        "models": models,
        "notices": first.notices,
        "estimated_queries": total,
        "timings_ms": {"total": (time.perf_counter() - started) * 1000},
    }
