"""The audit's runs for the checklist checks (a mixin of the runner's `_Audit`).

Coarse by default, so the app's audit stays quick; `thorough=True` runs every setting.
- loss_progress: the matrix's own attacks, plus one forward at each attack's end point.
- unbounded, eps_monotone: eps x 4 and the cap (L-inf 255/255, L2 64) with 2 steps, stopping
  at the first rung that fools (a model fooled at eps: none); thorough: eps x 2, x 4, ... up
  to the cap, every rung, the audit's steps.
- convergence: per defence, the cheapest white-box condition its attack did not fool, rerun
  with twice the steps; thorough: every white-box condition, twice the steps, and twice the
  steps from another random start.
- binarization: per defence, the white-box conditions its attack did not fool, 3 steps;
  thorough: every white-box condition, the audit's steps.
- batch_coupling: per defence, the photo alone vs in a batch of two with each of 2 partners;
  per defence with the release's batch-coupled step, the photo's float32 gradient under that
  step in a batch of two with each of 16 random images (and the exact gradient, where no
  gradient condition ran).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..attacks import MAX_EPS, craft_attack
from ..errors import InputError
from ..lattice import round_onto_lattice
from ..pixels import quantize_in_ball
from ..purifiers.base import BATCH_COUPLED
from ..release import coupled_view
from ..seeding import derive_seed, seeded
from ..threats import attacked_model
from . import checklist
from .checks import LOGIT_TOLERANCE, Check
from .conditions import CONDITIONS, UNDEFENDED, WHITE_BOX_CONDITIONS, attack_key, gradient_attack
from .gradients import GradientStats, compare, pixel_gradient
from .probes import BinaryHead, LossRecorder, random_in_ball, step_losses
from .progress import Progress, Timer
from .result import Cell

Key = tuple[str, str]
LADDER_STEPS = 2  # default: steps of each rung of the eps ladder
BINARIZATION_STEPS = 3  # default: steps of the binarization test's attack
INNER_POINTS = 4  # binarization: random points of the ball kept on the clean side
CHEAPEST_FIRST = ("bpda", "paper", "full", "release")  # one gradient's cost, smallest first
LADDER_CHECKS = ("unbounded", "eps_monotone", "eps_sweep")
PARTNERS = 2  # batch_coupling: a perturbed copy of the photo and a random image
# batch_coupling's gradient: random partners, one pair each (one pair's round-off noise has a
# cosine with the exact gradient of 0 +- 0.23 on the tests' tiny model; their mean, +- 0.06)
COUPLED_PAIRS = 16


class ChecklistRuns:
    """Stages and checks of the checklist; the runner's `_Audit` provides the rest."""

    def _init_checklist(self, thorough: bool) -> None:
        if not isinstance(thorough, bool):
            raise InputError(f"thorough must be True or False, got {thorough!r}.")
        self.thorough = thorough
        self.traces: dict[Key, list[float]] = {}
        self.ladders: dict[Key, list[tuple[float, bool, float]]] = {}
        self.longer: dict[Key, dict[str, bool]] = {}
        self.binary: dict[Key, tuple[float, float]] = {}
        self.coupling: dict[str, tuple[float, bool]] = {}
        self.coupled_gradients: dict[str, list[GradientStats]] = {}

    # ---- plan ------------------------------------------------------------------------------
    def _white_box(self) -> list[str]:
        return [c for c in WHITE_BOX_CONDITIONS if c in self.conditions]

    def _traced(self, condition: str) -> bool:
        return "loss_progress" in self.checks and CONDITIONS[condition].gradient

    def _coupled_defenses(self) -> list[str]:
        """The deterministic defences that have the release's batch-coupled step as an option
        (a random one's check warns whatever its gradient: its draws differ)."""
        return [
            m
            for m, p in self.purifiers.items()
            if BATCH_COUPLED in p.settings_spec and not self.stochastic.get(m)
        ]

    def _ladder_keys(self) -> list[Key]:
        if any(c in self.checks for c in LADDER_CHECKS[:2]):
            conditions = self._white_box()
        elif "eps_sweep" in self.checks and "full" in self.conditions:
            conditions = ["full"]
        else:
            return []
        return list(dict.fromkeys(attack_key(c, m) for c in conditions for m in self.models))

    def _ladder(self) -> list[float]:
        """The growing eps after the audit's own: x 2, x 4, ... up to the cap (thorough), or
        only x 4 and the cap."""
        cap = MAX_EPS[self.norm]
        if not self.thorough:
            return [e for e in dict.fromkeys([min(self.eps * 4, cap), cap]) if e > self.eps]
        ladder, eps = [], self.eps
        while eps < cap:
            eps = min(eps * 2, cap)
            ladder.append(eps)
        return ladder

    def _ladder_steps(self) -> int:
        return self.steps if self.thorough else min(self.steps, LADDER_STEPS)

    def _binarization_steps(self) -> int:
        return self.steps if self.thorough else min(self.steps, BINARIZATION_STEPS)

    def _longer_runs(self) -> list[str]:
        return ["twice the steps"] + (["twice the steps from another start"] * self.thorough)

    def _checklist_budget(self) -> int:
        """Model queries of the checklist's runs (each at its longest)."""
        total = sum(self.model_eot[key[1]] for key in self._attack_keys() if self._traced(key[0]))
        rungs = len(self._ladder())
        for _, model in self._ladder_keys():
            total += rungs * (self._queries(model, self._ladder_steps()) + 1)
        defended = [m for m in self.models if m != UNDEFENDED]
        white_box = self._white_box()
        if "convergence" in self.checks and white_box:
            runs = len(white_box) * len(self._longer_runs()) if self.thorough else 1
            total += sum(runs * (self._queries(m, 2 * self.steps) + 1) for m in defended)
        if "binarization" in self.checks and white_box and defended:
            total += len(defended) * (INNER_POINTS + 2)
            total += sum(
                len(white_box) * (self._queries(m, self._binarization_steps()) + 1)
                for m in defended
            )
        if "batch_coupling" in self.checks and defended:
            total += PARTNERS
            measured = self._gradient_keys()
            for model in self._coupled_defenses():
                missing = attack_key("full", model) not in measured  # the exact gradient
                total += self.model_eot[model] * (COUPLED_PAIRS + missing)
        return total

    def _queries(self, model: str, steps: int) -> int:
        config = gradient_attack(self.norm, self.eps, steps, self.model_eot[model])
        return config.estimated_queries(len(self.labels))

    # ---- loss traces -----------------------------------------------------------------------
    def _recorder(self, key: Key) -> LossRecorder:
        return LossRecorder(self._module(key), self.y)

    def _finish_trace(
        self, key: Key, recorder: LossRecorder, raw: torch.Tensor, progress: Progress, stage: str
    ) -> None:
        """Add the loss at the attack's end point and keep the per-step losses."""
        samples = self.model_eot[key[1]]
        seed = derive_seed(self.seed, "trace", *key)
        with progress.stage(stage, samples), torch.no_grad(), seeded(seed):
            for _ in range(samples):
                recorder.record(raw)
        self.traces[key] = step_losses(recorder.losses, samples)

    # ---- stages ----------------------------------------------------------------------------
    def _true_probability(self, model: str, key: Key) -> float:
        seed = derive_seed(self.seed, "evaluate", key[0], model)
        z = self._embedding(model, key)
        return float(self._logits(model, z, seed).softmax(dim=-1)[0, int(self.y)])

    def _ladders(self, pixels: torch.Tensor, progress: Progress) -> None:
        """(eps, correct, true-class probability) per rung for every ladder key; by default
        stops at the first rung that fools the model (and skips a model fooled at eps)."""
        ladder, steps = self._ladder(), self._ladder_steps()
        for key in self._ladder_keys():
            condition, model = key
            budget = self._queries(model, steps) + 1
            fooled = not self._correct(model, key)
            rows = []
            for eps in ladder:
                if fooled and not self.thorough:
                    progress.done += budget
                    progress.report(progress.done, "unbounded")
                    continue
                rung = (f"unbounded_{eps:.6g}_{condition}", model)
                self.modules[rung] = self._module(key)
                # no random start: at 255/255 the start alone is an unrelated image, and the
                # rung must show what the gradient steps reach
                config = replace(
                    gradient_attack(self.norm, eps, steps, self.model_eot[model]),
                    random_start=False,
                )
                self._craft(rung, pixels, progress, "unbounded", config)
                fooled = not self._correct(model, rung)
                rows.append((eps, not fooled, self._true_probability(model, rung)))
            self.ladders[key] = rows

    def _convergence(self, pixels: torch.Tensor, progress: Progress) -> None:
        """Rerun attacks with twice the steps (thorough: also from another random start)."""
        white_box = self._white_box()
        for model in self.models:
            if model == UNDEFENDED or not white_box:
                continue
            runs = self._longer_runs()
            budget = self._queries(model, 2 * self.steps) + 1
            if self.thorough:
                chosen = white_box
            else:
                order = [c for c in CHEAPEST_FIRST if c in white_box]
                unfooled = [c for c in order if self._correct(model, attack_key(c, model))]
                chosen = unfooled[:1]
                if not chosen:
                    progress.done += budget
                    progress.report(progress.done, "convergence")
            for condition in chosen:
                outcomes = {}
                for i, run in enumerate(runs):
                    key = (f"convergence_{i}_{condition}", model)
                    self.modules[key] = self._module(attack_key(condition, model))
                    config = gradient_attack(
                        self.norm, self.eps, 2 * self.steps, self.model_eot[model]
                    )
                    self._craft(key, pixels, progress, "convergence", config)
                    outcomes[run] = not self._correct(model, key)
                self.longer[(condition, model)] = outcomes

    def _binarization(self, pixels: torch.Tensor, progress: Progress) -> None:
        """The binarization test per defence and white-box condition (default: only where
        the audit's attack did not fool the model)."""
        steps, white_box = self._binarization_steps(), self._white_box()
        for model, purifier in self.purifiers.items():
            if not white_box:
                continue
            head, control = self._binary_head(model, pixels, progress)
            budget = self._queries(model, steps) + 1
            for condition in white_box:
                key = attack_key(condition, model)
                if not self.thorough and not self._correct(model, key):
                    progress.done += budget
                    progress.report(progress.done, "binarization")
                    continue
                threat = CONDITIONS[condition].threat
                module = attacked_model(
                    head,
                    purifier,
                    threat,
                    resize_input=True,
                    release_precision=self.release_precision,
                )
                config = gradient_attack(self.norm, self.eps, steps, self.model_eot[model])
                with progress.stage("binarization", budget - 1) as on_query:
                    raw = craft_attack(
                        module,
                        pixels,
                        torch.zeros_like(self.y),
                        config,
                        derive_seed(self.seed, "binarization", *key),
                        2,
                        on_query=on_query,
                        stochastic=self.stochastic.get(model),
                    )
                # rounded as every attack of the audit (a lattice re-attack where rounding
                # undid it), so a short attack is not judged on rounding alone
                with seeded(derive_seed(self.seed, "binarization lattice", *key)):
                    adversarial = round_onto_lattice(
                        module, pixels, raw, torch.zeros_like(self.y), self.norm, self.eps
                    ).adversarial
                with progress.stage("binarization", 1), torch.no_grad():
                    z = self._encode(adversarial, model)
                margin = self._binary_margin(head, model, z, ("binarization", condition))
                self.binary[(condition, model)] = (margin, control)

    def _binary_head(
        self, model: str, pixels: torch.Tensor, progress: Progress
    ) -> tuple[BinaryHead, float]:
        """The two-class head for `model`, and a fresh random point's margin (the control)."""
        with seeded(derive_seed(self.seed, "binarization", model)):
            points = random_in_ball(pixels, self.norm, self.eps, INNER_POINTS + 2)
        points = quantize_in_ball(pixels.expand_as(points), points, self.norm, self.eps)
        with progress.stage("binarization", INNER_POINTS + 2), torch.no_grad():
            z = torch.cat([self._encode(p.unsqueeze(0), model) for p in points])
        clean = self._embedding(model, ("clean", UNDEFENDED))
        features = [
            self._served_embedding(model, row.unsqueeze(0), ("binarization", str(i)))
            for i, row in enumerate(torch.cat([clean, z]))
        ]
        backbone = self.served[model].backbone
        head = BinaryHead(backbone, features[0][0], features[1][0], torch.cat(features[2:-1]))
        return head, float(head.margin(features[-1])[0])

    def _served_embedding(self, model: str, z: torch.Tensor, tags: tuple[str, ...]) -> torch.Tensor:
        purifier = self.purifiers[model]
        with torch.no_grad(), seeded(derive_seed(self.seed, *tags, model)):
            return purifier(z)

    def _binary_margin(
        self, head: BinaryHead, model: str, z: torch.Tensor, tags: tuple[str, ...]
    ) -> float:
        return float(head.margin(self._served_embedding(model, z, tags))[0])

    def _batch_coupling(
        self, pixels: torch.Tensor, progress: Progress, gradients: dict[Key, torch.Tensor]
    ) -> None:
        """Each defence on the photo alone and in a batch of two with each partner; and the
        photo's gradient beside random images under the release's coupled step."""
        with seeded(derive_seed(self.seed, "batch_coupling")):
            copy = random_in_ball(pixels, self.norm, self.eps, 1)
            other = torch.rand_like(pixels)
        copy = quantize_in_ball(pixels, copy, self.norm, self.eps)
        encoded: dict[int, list[torch.Tensor]] = {}  # per backbone
        with progress.stage("batch_coupling", PARTNERS), torch.no_grad():
            for model in self.purifiers:
                backbone = id(self.served[model].backbone)
                if backbone not in encoded:
                    encoded[backbone] = [self._encode(p, model) for p in (copy, other)]
        for model, purifier in self.purifiers.items():
            z = self._embedding(model, ("clean", UNDEFENDED))
            partners = encoded[id(self.served[model].backbone)]
            seed = derive_seed(self.seed, "batch_coupling", model)
            with torch.no_grad(), seeded(seed):
                alone = purifier(z)
            change, changed = 0.0, False
            for partner in partners:
                with torch.no_grad(), seeded(seed):
                    paired = purifier(torch.cat([z, partner]))[:1]
                change = max(change, float((paired - alone).norm() / alone.norm()))
                classifier = self.served[model].classifier
                logits = classifier.logits_from_embeddings(torch.cat([alone, paired]))
                changed = changed or int(logits[0].argmax()) != int(logits[1].argmax())
            self.coupling[model] = (change, changed)
        coupled = self._coupled_defenses()
        if coupled:
            with seeded(derive_seed(self.seed, "batch_coupling", "pairs")):
                others = torch.rand((COUPLED_PAIRS, *pixels.shape[1:]), device=pixels.device)
        for model in coupled:
            self.coupled_gradients[model] = self._coupled_gradients(
                model, pixels, others, gradients, progress
            )

    def _coupled_gradients(
        self,
        model: str,
        pixels: torch.Tensor,
        partners: torch.Tensor,
        gradients: dict[Key, torch.Tensor],
        progress: Progress,
    ) -> list[GradientStats]:
        """The photo's pixel gradient in a batch of two with each of `partners` under the
        release's step, normalised over the batch, each against the exact gradient (measured
        here when no gradient condition ran). Both images carry the photo's label and the loss
        is summed over the pair, as the release's attacks summed it. Float32 with the inner
        gradient held constant (`paper`): in float16 it would underflow to 0 first."""
        samples, seed = self.model_eot[model], derive_seed(self.seed, "gradient", model)
        key = attack_key("full", model)
        full = gradients.get(key)
        if full is None:
            with progress.stage("batch_coupling", samples) as on_query:
                full = pixel_gradient(self._module(key), pixels, self.y, seed, samples)
                on_query(samples)
        coupled = coupled_view(self.purifiers[model])
        module = attacked_model(self.served[model].classifier, coupled, "paper", resize_input=True)
        found = []
        with progress.stage("batch_coupling", len(partners) * samples) as on_query:
            for i, partner in enumerate(partners):
                pair = torch.cat([pixels, partner.unsqueeze(0)])
                gradient = pixel_gradient(module, pair, self.y.repeat(2), seed, samples)[:1]
                found.append(compare("batch_coupling", model, gradient, full))
                on_query((i + 1) * samples)
        return found

    def _checklist_stages(
        self,
        pixels: torch.Tensor,
        progress: Progress,
        timer: Timer,
        gradients: dict[Key, torch.Tensor],
    ) -> None:
        if self._ladder_keys():
            with timer("unbounded"):
                self._ladders(pixels, progress)
        if "convergence" in self.checks:
            with timer("convergence"):
                self._convergence(pixels, progress)
        if "binarization" in self.checks:
            with timer("binarization"):
                self._binarization(pixels, progress)
        if "batch_coupling" in self.checks and self.purifiers:
            with timer("batch_coupling"):
                self._batch_coupling(pixels, progress, gradients)

    # ---- checks ----------------------------------------------------------------------------
    def _sweeps(self, matrix: list[Cell]) -> dict[str, list[tuple[float, bool]]]:
        """The `full` rows of the ladder, as the `eps_sweep` check reads them."""
        if "eps_sweep" not in self.checks or "full" not in self.conditions:
            return {}
        correct = {(cell.condition, cell.model): cell.correct for cell in matrix}
        return {
            model: [(self.eps, not correct[("full", model)])]
            + [(eps, not right) for eps, right, _ in self.ladders[attack_key("full", model)]]
            for model in self.models
        }

    def _checklist_checks(
        self, matrix: list[Cell], differences: dict[str, float], stats: list[GradientStats]
    ) -> list[Check]:
        correct = {(cell.condition, cell.model): cell.correct for cell in matrix}
        zero = {(row.condition, row.model) for row in stats if row.norm == 0}
        found: list[Check] = []
        for (condition, model), losses in self.traces.items():
            fooled = not self._correct(model, (condition, model))
            title = self._subject(condition, model)
            stuck = (condition, model) in zero
            found.append(checklist.loss_progress(condition, model, title, losses, fooled, stuck))
        found += self._ladder_checks(correct)
        for model, title in self.models.items():
            if model != UNDEFENDED:
                found += self._model_checks(model, title, correct, differences)
        return found

    def _ladder_checks(self, correct: dict[tuple[str, str], bool]) -> list[Check]:
        """`unbounded` and `eps_monotone` from the eps ladders."""
        found: list[Check] = []
        for key, rows in self.ladders.items():
            condition, model = key
            title = self._subject(condition, model)
            right = self._correct(model, key)
            at_eps = [(self.eps, not right)] + [(eps, not ok) for eps, ok, _ in rows]
            if "unbounded" in self.checks:
                clean_ok = correct[("clean", model)]
                found.append(
                    checklist.unbounded(condition, model, title, clean_ok, at_eps, self.norm)
                )
            if "eps_monotone" in self.checks:
                clean_key = ("clean", UNDEFENDED)
                series = [
                    (0.0, correct[("clean", model)], self._true_probability(model, clean_key)),
                    (self.eps, right, self._true_probability(model, key)),
                    *rows,
                ]
                found.append(checklist.eps_monotone(condition, model, title, series, self.norm))
        return found

    def _model_checks(
        self,
        model: str,
        title: str,
        correct: dict[tuple[str, str], bool],
        differences: dict[str, float],
    ) -> list[Check]:
        """The checks of one defended model: convergence, transfer vs white box,
        binarization and batch coupling."""
        found: list[Check] = []
        white_box = self._white_box()
        if "convergence" in self.checks and white_box:
            cheapest = [c for c in CHEAPEST_FIRST if c in white_box][:1]
            tested = [c for c in white_box if (c, model) in self.longer] or cheapest
            for condition in tested:
                found.append(
                    checklist.convergence(
                        condition,
                        model,
                        self._subject(condition, model),
                        not correct[(condition, model)],
                        self.longer.get((condition, model)),
                        self.steps,
                    )
                )
        if "transfer_vs_white_box" in self.checks and "transfer" in self.conditions and white_box:
            found.append(
                checklist.transfer_vs_white_box(
                    model,
                    title,
                    correct[("clean", model)],
                    not correct[("transfer", model)],
                    {c: not correct[(c, model)] for c in white_box},
                    {name: c.title for name, c in CONDITIONS.items()},
                )
            )
        if "binarization" in self.checks:
            for condition in white_box:
                margin, control = self.binary.get((condition, model), (None, None))
                found.append(
                    checklist.binarization(
                        condition,
                        model,
                        self._subject(condition, model),
                        None if margin is None else margin > 0,
                        margin,
                        control,
                    )
                )
        if "batch_coupling" in self.checks:
            change, changed = self.coupling[model]
            random_model = differences[model] > LOGIT_TOLERANCE
            found.append(
                checklist.batch_coupling(
                    model,
                    title,
                    change,
                    changed,
                    random_model,
                    self.coupled_gradients.get(model, []),
                    self.norm,
                )
            )
        return found

    def _checklist_settings(self) -> dict:
        return {
            "thorough": self.thorough,
            "ladder": self._ladder() if self._ladder_keys() else [],
            "ladder_steps": self._ladder_steps(),
            "ladder_stops_when_fooled": not self.thorough,
            "convergence_steps": 2 * self.steps,
            "convergence_runs": self._longer_runs(),
            "binarization_steps": self._binarization_steps(),
            "binarization_inner_points": INNER_POINTS,
        }
