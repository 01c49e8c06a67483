"""The robustness curve: the engine (clipure_core/curve.py), its figure and `audit --curve`."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest

from clipure_core import AttackConfig, InputError, Playground
from clipure_core.audit.cli import audit_curve_attack
from clipure_core.cli import main
from clipure_core.curve import (
    check_curve,
    curve_queries,
    eps_ladder,
    eps_text,
    ladder_attacks,
    robustness_curve,
)
from clipure_core.plots import curve_figure

from .conftest import ASSETS, LABELS, TINY_MODEL

PGD = AttackConfig("pgd", "linf", 8 / 255, 3)


@pytest.fixture(scope="module")
def playground(backbone):
    return Playground(backbone, templates="single")


class NoModelWork:
    """A playground that fails the test if the curve attacks anything."""

    def run(self, *args, **kwargs):
        raise AssertionError("the curve ran an attack")


class Recording:
    """A playground that records each attack and answers P(cat) 0.8, 0.6, 0.4, 0.3, 0.2 for
    the adversarial image of its 1st, 2nd, ... call (0.9 for the clean one)."""

    ADVERSARIAL = (0.8, 0.6, 0.4, 0.3, 0.2)

    def __init__(self):
        self.calls = []

    def run(self, image, labels, attack, **kwargs):
        self.calls.append((attack, kwargs))
        cat = self.ADVERSARIAL[len(self.calls) - 1]
        return SimpleNamespace(
            labels=["cat", "dog"],
            true_label="cat",
            models=["undefended"],
            probabilities={
                "clean": {"undefended": [0.9, 0.1]},
                "adversarial": {"undefended": [cat, 1 - cat]},
            },
            settings={"attack": {"steps": attack.steps}},
            notices=[],
        )


def test_each_eps_of_the_ladder_is_attacked_once_and_reported_in_its_column(cat_photo):
    """The page's eps (3/255, not on the ladder) is replaced by each eps of the ladder."""
    playground = Recording()
    attack = AttackConfig("pgd", "linf", 3 / 255, 3, alpha=1.5 / 255)
    curve = robustness_curve(playground, cat_photo, "cat, dog", attack, "bpda", [], seed=7)
    attacks = [call[0] for call in playground.calls]
    assert [config.eps * 255 for config in attacks] == pytest.approx([1, 2, 4, 8, 16])
    assert [config.alpha * 255 for config in attacks] == pytest.approx([0.5, 1, 2, 4, 8])
    assert {(c[1]["threat"], c[1]["seed"]) for c in playground.calls} == {("bpda", 7)}
    series = curve["models"]["undefended"]
    assert series["true_probability"] == [0.9, 0.8, 0.6, 0.4, 0.3, 0.2]
    assert series["prediction"] == ["cat", "cat", "cat", "dog", "dog", "dog"]
    assert series["correct"] == [True, True, True, False, False, False]


def test_the_eps_ladders():
    assert eps_ladder("linf") == [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    assert eps_ladder("l2") == [0, 0.125, 0.25, 0.5, 1, 2]
    assert [eps_text("linf", i) for i in range(6)] == [
        "0", "1/255", "2/255", "4/255", "8/255", "16/255"
    ]  # fmt: skip
    assert [eps_text("l2", i) for i in range(6)] == ["0", "0.125", "0.25", "0.5", "1", "2"]
    with pytest.raises(InputError, match="norm 'l1': use linf or l2"):
        eps_ladder("l1")


def test_an_explicit_step_size_scales_with_eps():
    attack = AttackConfig("pgd", "linf", 4 / 255, 10, alpha=1 / 255)
    alphas = [config.alpha * 255 for config in ladder_attacks(attack)]
    assert alphas == pytest.approx([0.25, 0.5, 1, 2, 4])
    assert [config.alpha for config in ladder_attacks(PGD)] == [None] * 5  # 2.5 eps / steps
    # a step of the whole pixel range at 1/255 would be 16 at 16/255: it stays at the
    # largest step there is (1, the whole range), not a refusal after the text is encoded
    wide = AttackConfig("pgd", "linf", 1 / 255, 10, alpha=1.0)
    assert [config.alpha for config in ladder_attacks(wide)] == [1.0] * 5


def test_the_query_estimate_counts_each_attacked_model_at_five_eps():
    pgd10 = AttackConfig("pgd", "linf", 4 / 255, 10)  # (10 + 1) steps + 2 probe forwards = 13
    assert curve_queries(pgd10, "transfer", ["clipure_cos"], 5) == 13 * 5
    assert curve_queries(pgd10, "bpda", ["clipure_cos"], 5) == 26 * 5
    # CLIPure-Diff is stochastic: 10 more forwards judge the attack's best point
    assert curve_queries(pgd10, "bpda", ["clipure_diff"], 5) == (13 + 23) * 5


def test_the_curve_is_the_clean_prediction_then_one_attack_per_eps(playground, cat_photo):
    labels = ", ".join(LABELS)
    calls = []
    curve = robustness_curve(
        playground,
        cat_photo,
        labels,
        PGD,
        "bpda",
        ["clipure_cos"],
        on_progress=lambda *call: calls.append(call),
    )
    assert list(curve["models"]) == ["undefended", "clipure_cos"]
    assert curve["eps_text"] == ["0", "1/255", "2/255", "4/255", "8/255", "16/255"]
    assert (curve["norm"], curve["threat"], curve["method"], curve["steps"]) == (
        "linf", "bpda", "pgd", 3
    )  # fmt: skip
    run = playground.run(cat_photo, labels, PGD, "bpda", ["clipure_cos"])  # eps 8/255
    truth = LABELS.index(run.true_label)
    assert curve["true_label"] == run.true_label
    for model, series in curve["models"].items():
        assert series["true_probability"][0] == run.probabilities["clean"][model][truth]
        assert series["true_probability"][4] == run.probabilities["adversarial"][model][truth]
        assert series["prediction"][4] == run.predictions()["adversarial"][model]
        assert series["correct"][0] is True  # the true label is the clean prediction
        assert series["correct"] == [p == run.true_label for p in series["prediction"]]
    assert curve["estimated_queries"] == 2 * 6 * 5  # 2 attacked models x (4 + 2) x 5 eps
    assert {total for _, total, _ in calls} == {60}
    # one step per query, never back: each eps attacks two models (6 queries each)
    assert [done for done, _, _ in calls] == [*range(1, 61), 60]
    assert calls[-1] == (60, 60, "robustness curve: done")
    assert calls[0] == (1, 60, "robustness curve: eps 1/255")
    again = robustness_curve(playground, cat_photo, labels, PGD, "bpda", ["clipure_cos"])
    assert {**again, "timings_ms": None} == {**curve, "timings_ms": None}  # same seed


def test_the_l2_curve_and_a_given_true_label(playground, cat_photo):
    attack = AttackConfig("pgd-l2", "l2", 0.5, 2)
    curve = robustness_curve(
        playground, cat_photo, LABELS, attack, "transfer", [], true_label="dog"
    )
    assert list(curve["models"]) == ["undefended"]
    assert curve["eps"] == [0, 0.125, 0.25, 0.5, 1, 2] and curve["true_label"] == "dog"
    series = curve["models"]["undefended"]
    assert series["correct"] == [p == "dog" for p in series["prediction"]]


def test_stopping_ends_the_curve_at_the_next_query(playground, cat_photo):
    calls = []

    def stop(done, total, stage):
        calls.append(done)
        raise KeyboardInterrupt  # what the app's cancel flag raises instead: Cancelled

    with pytest.raises(KeyboardInterrupt):
        robustness_curve(playground, cat_photo, LABELS, PGD, on_progress=stop)
    assert calls == [1]


def test_refusals_come_before_any_attack(cat_photo):
    pgd10 = AttackConfig("pgd", "linf", 4 / 255, 10)
    with pytest.raises(InputError) as refused:
        robustness_curve(NoModelWork(), cat_photo, LABELS, pgd10, max_queries=64)
    assert str(refused.value) == (
        "this robustness curve needs about 65 model queries (5 attacks), more than the 64 "
        "allowed: use fewer attack steps, fewer labels or the transfer threat (one "
        "attacked model)."
    )
    with pytest.raises(InputError, match="threat model 'oracle'"):
        robustness_curve(NoModelWork(), cat_photo, LABELS, pgd10, threat="oracle")
    with pytest.raises(InputError, match="unknown defence 'jpeg'"):
        robustness_curve(NoModelWork(), cat_photo, LABELS, pgd10, defenses=["jpeg"])


def test_the_budget_weighs_a_query_by_what_it_costs():
    """A query through CLIPure-Diff also runs its prior once per step (query_cost 1 + 10):
    its GPU lease must cover that, not one image-encoder query."""
    pgd100 = AttackConfig("pgd", "linf", 4 / 255, 100)
    # per eps: undefended 101 + 2, CLIPure-Cos 103, CLIPure-Diff 103 + 10 judging draws
    assert curve_queries(pgd100, "bpda", ["clipure_cos", "clipure_diff"], 5) == 319 * 5
    with pytest.raises(InputError) as refused:
        check_curve(LABELS, pgd100, "bpda", ["clipure_cos", "clipure_diff"], max_queries=5600)
    # (103 + 103 + 113 x 11) x 5 = 7,245
    assert str(refused.value) == (
        "this robustness curve needs about 7,245 model queries (5 attacks; a query through "
        "CLIPure-Diff counts as 11), more than the 5,600 allowed: use fewer attack steps, "
        "fewer labels or the transfer threat (one attacked model)."
    )
    settings = {"clipure_diff": {"steps": 2}}  # (103 + 103 + 113 x 3) x 5 = 2,725
    _, total = check_curve(
        LABELS, pgd100, "bpda", ["clipure_cos", "clipure_diff"], max_queries=5600,
        defense_settings=settings,
    )  # fmt: skip
    assert total == 319 * 5  # the progress bar's count: model queries


def test_the_figure_marks_right_and_fooled():
    curve = {
        "norm": "linf",
        "eps_text": ["0", "1/255", "2/255"],
        "true_label": "cat",
        "method": "pgd",
        "steps": 10,
        "threat": "transfer",
        "models": {
            "undefended": {
                "true_probability": [0.9, 0.4, 0.1],
                "prediction": ["cat", "dog", "dog"],
                "correct": [True, False, False],
            },
            "clipure_cos": {
                "true_probability": [0.8, 0.7, 0.6],
                "prediction": ["cat", "cat", "cat"],
                "correct": [True, True, True],
            },
        },
    }
    figure = curve_figure(curve)
    lines = [trace for trace in figure.data if trace.x[0] is not None]
    assert [trace.name for trace in lines] == ["Undefended CLIP", "CLIPure-Cos"]
    assert list(lines[0].marker.symbol) == ["circle", "x", "x"]
    assert list(lines[1].marker.symbol) == ["circle", "circle", "circle"]
    assert list(lines[0].y) == [0.9, 0.4, 0.1] and list(lines[0].x) == ["0", "1/255", "2/255"]
    assert figure.layout.xaxis.title.text == "eps (L-inf)"
    assert figure.layout.yaxis.title.text == "P(cat)"


def cli(capsys, *args):
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_audit_curve_adds_the_curve_to_the_json_and_the_text(capsys, tiny_checkpoint):
    photo = str(ASSETS / "chelsea.png")
    common = [photo, "--labels", "cat,dog,car", "--model", TINY_MODEL]
    common += ["--pretrained", str(tiny_checkpoint), "--steps", "1", "--conditions", "clean"]
    code, out, err = cli(capsys, *common, "--curve", "--json", "--quiet")
    assert code == 0, err
    data = json.loads(out)
    assert [cell["condition"] for cell in data["matrix"]][:1] == ["clean"]
    curve = data["curve"]
    assert list(curve["models"]) == ["undefended", "clipure_cos"]
    assert (curve["threat"], curve["method"], curve["steps"]) == ("full", "pgd", 1)
    assert curve["eot_samples"] == 1  # no random defence
    assert all(len(series["correct"]) == 6 for series in curve["models"].values())
    code, out, err = cli(capsys, *common, "--curve", "--curve-threat", "transfer")
    assert code == 0, err
    assert "robustness curve (pgd, threat transfer), P(true label):" in out
    assert "16/255" in out and "curve" in err  # the progress bar


L2_EOT_CURVE = [str(ASSETS / "chelsea.png"), "--labels", "a,b", "--curve", "--norm", "l2"]
L2_EOT_CURVE += ["--eps", "0.5", "--eot", "4"]


def test_audit_curve_attacks_a_random_defense_with_the_audits_eot():
    args = argparse.Namespace(norm="linf", steps=2, eot=4, defense="clipure_cos,clipure_diff")
    attack = audit_curve_attack(args)
    assert (attack.method, attack.steps, attack.eot_samples) == ("pgd", 2, 4)
    args.defense = "clipure_cos"  # deterministic: one draw is exact
    assert audit_curve_attack(args).eot_samples == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", str(ASSETS), "--curve"], "--curve draws one photo's curve"),
        (
            [*L2_EOT_CURVE, "--defense", "clipure_diff"],
            "torchattacks has no EOT variant of PGD-L2; use apgd-ce with norm l2. In the audit: "
            "eot 1, or norm linf.",
        ),
        (
            [str(ASSETS / "chelsea.png"), "--labels", "a,b", "--curve", "--curve-threat", "x"],
            "threat model 'x'",
        ),
    ],
)
def test_audit_curve_refusals_come_before_the_weights(capsys, args, message):
    # --model nonexistent: loading weights would fail with another message
    code, _, err = cli(capsys, *args, "--model", "no-such-model")
    assert code == 2 and message in err
