"""A defence of one's own, `package.module:Class`, loaded from a temporary module through every
path (predict, audit, evaluate under torchrun, the app with --defense-module), touching no file
of the project: the module is docs/custom-defenses.md's example, read from the page."""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from clipure_core import InputError
from clipure_core.cli import main as cli_main
from clipure_core.purifiers import PURIFIERS, check_defense, load_defense, model_title

from .conftest import ASSETS, TINY_MODEL
from .page import page_inputs, page_outputs
from .test_refusals import forbid_model_work

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom-defenses.md"
SPEC = "my_defense:NullBlend"
MODULES = ("my_defense", "costly_defense", "bad_defenses", "broken_defenses", "chatty_defense")
# Each query through Costly runs 1 + 2 x steps image-encoder queries' worth of work.
COSTLY = """
from my_defense import NullBlend


class Costly(NullBlend):
    title = "Costly blend"
    flag_prefix = "costly"

    @classmethod
    def query_cost(cls, settings):
        return 1 + 2 * settings.get("steps", 10)
"""
BAD = """
from clipure_core.purifiers import CosPurifier, Setting
from my_defense import NullBlend

NOT_A_CLASS = 3


class Plain:
    title = "not a purifier"


class CosCopy(CosPurifier):  # inherits CLIPure-Cos's name and flag prefix
    title = "Cos copy"


class SamePrefix(NullBlend):
    title, flag_prefix = "Same prefix", "cos"


class NoPrefix(NullBlend):
    title, flag_prefix = "No prefix", ""


class EpsFlag(NullBlend):
    title, flag_prefix = "Eps flag", "eps-flag"
    settings_spec = (Setting("steps", "steps", 2, flag="--eps"),)
"""
# Defences that load but misbehave when they run.
BROKEN = """
import torch

from my_defense import NullBlend


class NaNs(NullBlend):
    title, flag_prefix = "NaN blend", "nans"

    def purify(self, z, gradient, on_step=None):
        return z * float("nan")


class Doubled(NullBlend):
    title, flag_prefix = "Doubled", "doubled"

    def purify(self, z, gradient, on_step=None):
        return torch.cat([z, z], dim=-1)


class Buggy(NullBlend):
    title, flag_prefix = "Buggy", "buggy"

    def __init__(self, backbone, templates="ensemble", steps=10, weight=0.25):
        super().__init__(backbone, templates, steps, weight)
        len(3)  # a bug of its own: a TypeError that is not about its settings
"""
CHATTY = """
print("chatty_defense imported")

from my_defense import NullBlend


class Chatty(NullBlend):
    title, flag_prefix = "Chatty", "chatty"
"""


def example_code() -> str:
    """The page's example defence, as a user would save it."""
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return code


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """The page's example as my_defense.py (and two more modules) on sys.path; whatever
    they registered is gone afterwards."""
    (tmp_path / "my_defense.py").write_text(example_code())
    (tmp_path / "costly_defense.py").write_text(COSTLY)
    (tmp_path / "bad_defenses.py").write_text(BAD)
    (tmp_path / "broken_defenses.py").write_text(BROKEN)
    (tmp_path / "chatty_defense.py").write_text(CHATTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = dict(PURIFIERS)
    yield tmp_path
    PURIFIERS.clear()
    PURIFIERS.update(before)
    for name in MODULES:
        sys.modules.pop(name, None)


def test_the_page_example_is_about_twenty_lines():
    assert 20 <= len(example_code().splitlines()) <= 32


def test_each_default_is_written_once():
    """The constructors' defaults are their Settings' (no second copy to drift)."""
    for purifier in PURIFIERS.values():
        parameters = inspect.signature(purifier).parameters
        for setting in purifier.settings_spec:
            assert parameters[setting.name].default == setting.default, (purifier, setting)
    from clipure_core.purifiers import cos_purify

    defaults = inspect.signature(cos_purify).parameters
    assert (defaults["steps"].default, defaults["step_size"].default) == (10, 30.0)


def predict_args(checkpoint, *extra) -> list[str]:
    photo = str(ASSETS / "chelsea.png")
    weights = ["--model", TINY_MODEL, "--pretrained", str(checkpoint), "--templates", "single"]
    return ["predict", photo, "--labels", "cat, dog, fox", *weights, "--steps", "2", *extra]


def test_predict_cli_loads_it_with_its_flags(modules, tiny_checkpoint, capsys):
    assert SPEC not in PURIFIERS  # not loaded until a command line names it
    extra = ["--defense", f"clipure_cos,{SPEC}", "--blend-weight", "1", "--blend-steps", "1"]
    code = cli_main([*predict_args(tiny_checkpoint, *extra, "--threat", "full"), "--json"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    assert list(data["probabilities"]["clean"]) == ["undefended", "clipure_cos", SPEC]
    assert data["settings"]["defenses"][SPEC] == {"steps": 1, "weight": 1.0}
    trajectory = data["diagnostics"][SPEC]["trajectory"]
    # weight 1: one step lands on the null prompt, whatever the image
    assert [row["step"] for row in trajectory] == [0, 1]
    assert trajectory[1]["cos_to_null"] == pytest.approx(1.0, abs=1e-6)
    clean, adversarial = (data["probabilities"][c][SPEC] for c in ("clean", "adversarial"))
    assert adversarial == pytest.approx(clean, abs=1e-6)  # both purified to the same point
    assert model_title(SPEC) == "Null blend"


def test_audit_json_shows_its_own_title(modules, tiny_checkpoint, capsys):
    args = ["audit", str(ASSETS / "chelsea.png"), "--labels", "cat, dog, fox"]
    args += ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--templates", "single"]
    args += ["--defense", SPEC, "--blend-steps", "3", "--conditions", "clean,bpda,full"]
    args += ["--checks", "zero_gradients,inference_time_optimisation", "--steps", "2"]
    assert cli_main([*args, "--json", "--quiet"]) == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    assert [(model["name"], model["title"], model["defense"]) for model in data["models"]] == [
        ("undefended", "Undefended CLIP", "none"),
        (SPEC, "Null blend", SPEC),
    ]
    assert data["settings"]["defenses"] == {SPEC: {"steps": 3, "weight": 0.25}}
    cells = {(cell["condition"], cell["model"]) for cell in data["matrix"]}
    assert ("full", SPEC) in cells and ("bpda", SPEC) in cells


def test_evaluate_under_torchrun_loads_it_in_every_worker(
    modules, tiny_model_dir, image_folder, tmp_path
):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "clipure_core.evaluate"]
    command += ["--data", str(image_folder), "--model", f"local-dir:{tiny_model_dir}"]
    command += ["--templates", "single", "--num-images", "4", "--batch-size", "2"]
    command += ["--attack", "pgd", "--steps", "1", "--threat", "bpda"]
    command += ["--defense", f"none,{SPEC}", "--blend-weight", "0.5"]
    command += ["--out", str(out), "--no-progress"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ASSETS.parent, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["models"] == ["undefended", SPEC]
    assert results["settings"]["defenses"][SPEC] == {"steps": 10, "weight": 0.5}
    assert results["timings"]["this_invocation"]["processes"] == 2
    assert "Null blend" in (out / "report.html").read_text()


def test_the_app_adds_it_from_its_command_line(modules, tiny_checkpoint):
    from app.config import parse_config
    from app.ui import build_demo

    args = ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--device", "cpu"]
    config = parse_config([*args, "--examples", "lazy", "--defense-module", SPEC], environ={})
    assert config.defense_modules == (SPEC,)
    demo = build_demo(config)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_port=None)
    try:
        client = Client(url, verbose=False)
        inputs = page_inputs(
            url,
            Photo=handle_file(str(ASSETS / "chelsea.png")),
            **{"Labels (comma-separated)": "cat, dog, fox", "Attack steps": 2},
            **{"Null blend": True, "Null blend weight": 0.5, "Null blend steps": 3},
        )
        outputs = page_outputs(url, client.predict(*inputs, api_name="/run"))
        api = client.predict(
            image=handle_file(str(ASSETS / "chelsea.png")),
            labels="cat, dog",
            method="pgd",
            norm="linf",
            eps=4,
            steps=1,
            threat="transfer",
            defenses=SPEC,
            seed=0,
            api_name="/playground",
        )
    finally:
        demo.close()
    verdict = outputs["verdict"]
    assert "CLIPure-Cos" in verdict and "Null blend" in verdict
    assert "Null blend" in json.dumps(outputs["probabilities"])
    assert "Null blend: ended" in json.dumps(outputs["trajectory-my_defense:NullBlend"])
    command = shlex.split(outputs["command"])
    at = command.index("--defense")
    assert command[at : at + 6] == [
        "--defense",
        f"clipure_cos,{SPEC}",
        "--blend-steps",
        "3",
        "--blend-weight",
        "0.5",
    ]
    assert list(api["probabilities"]["clean"]) == ["undefended", SPEC]


def test_its_cost_reaches_the_gpu_lease(modules):
    from app.gpu import requested_seconds
    from app.service import PlaygroundRequest

    load_defense(SPEC)
    load_defense("costly_defense:Costly")

    def lease(defense: str) -> int:
        request = PlaygroundRequest(
            labels="a, b",
            steps=10,
            threat="bpda",
            defenses=[defense],
            defense_settings={defense: {"steps": 4}},
        )
        return requested_seconds(None, None, request)

    # PGD, 10 steps: 13 queries on undefended CLIP and 13 through the defence (cost 1), or
    # 13 x (1 + 2 x 4) through Costly: 20 s + 0.05 s per query
    assert lease(SPEC) == int(20 + 0.05 * (13 + 13))
    assert lease("costly_defense:Costly") == int(20 + 0.05 * (13 + 13 * 9))
    # CLIPure-Diff's own cost, 1 + its 4 steps, on its 23 queries (10 more: fresh draws)
    assert lease("clipure_diff") == int(20 + 0.05 * (13 + 23 * 5))


def test_a_request_never_imports_a_defense(modules, backbone):
    """A name that arrives with a request (the app's page or API, the Python API) is looked
    up; only a command line imports."""
    from app.service import PlaygroundRequest

    request = PlaygroundRequest(labels="a, b", defense_settings={SPEC: {"steps": 2}})
    with pytest.raises(InputError) as refused:
        request.purifier_settings()
    assert str(refused.value) == (
        "defence 'my_defense:NullBlend' is not loaded: name it on the command line "
        "(--defense my_defense:NullBlend, or python app.py --defense-module "
        "my_defense:NullBlend)."
    )
    assert "my_defense" not in sys.modules
    with pytest.raises(InputError, match="is not loaded"):
        check_defense("os:system")


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "no_such_module:Thing",
            "defence 'no_such_module:Thing': no module named 'no_such_module' (is its folder "
            "on PYTHONPATH?).",
        ),
        (
            "my_defense:NullBlnd",
            "defence 'my_defense:NullBlnd': module 'my_defense' has no 'NullBlnd'.",
        ),
        (
            "bad_defenses:Plain",
            "defence 'bad_defenses:Plain': Plain is not a subclass of "
            "clipure_core.purifiers.Purifier.",
        ),
        (
            "bad_defenses:NOT_A_CLASS",
            "defence 'bad_defenses:NOT_A_CLASS': NOT_A_CLASS is not a subclass of "
            "clipure_core.purifiers.Purifier.",
        ),
        (
            "bad_defenses:CosCopy",
            "defence 'bad_defenses:CosCopy': its name 'clipure_cos' is taken by CosPurifier; "
            "give the class a name of its own.",
        ),
        (
            "bad_defenses:SamePrefix",
            "defence 'bad_defenses:SamePrefix': its flag_prefix 'cos' is clipure_cos's "
            "already; choose another.",
        ),
        (
            "bad_defenses:NoPrefix",
            "defence 'bad_defenses:NoPrefix': set its flag_prefix (lower-case letters, digits "
            "and '-', e.g. 'mine'): its settings become the flags --{flag_prefix}-{setting}.",
        ),
        (
            "bad_defenses:EpsFlag",
            "defence 'bad_defenses:EpsFlag': its flag --eps is taken already; change its "
            "flag_prefix or the setting's flag.",
        ),
        (
            "my_defense",
            "unknown defence 'my_defense': use one of clipure_cos, clipure_diff, "
            "or package.module:Class.",
        ),
    ],
)
def test_bad_defenses_are_refused_with_one_message(
    modules, tiny_checkpoint, capsys, monkeypatch, spec, message
):
    """In predict, audit and evaluate, before any model work, leaving nothing registered."""
    from clipure_core.evaluate.cli import main as evaluate_main

    forbid_model_work(monkeypatch)
    audit = ["audit", str(ASSETS / "chelsea.png"), "--labels", "cat, dog", "--defense", spec]
    evaluate = ["--data", "cifar10", "--out", str(modules / "out"), "--defense", spec]
    for run in (
        lambda: cli_main(predict_args(tiny_checkpoint, "--defense", spec)),
        lambda: cli_main(audit),
        lambda: evaluate_main(evaluate),
    ):
        code = run()
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert captured.err == f"error: {message}\n"
        assert set(PURIFIERS) == {"clipure_cos", "clipure_diff"}  # nothing half-registered


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "bad_defenses:Plain",
            "defence 'bad_defenses:Plain': Plain is not a subclass of "
            "clipure_core.purifiers.Purifier.",
        ),
        # the class forgotten: refused, not started without the defence
        ("my_defense", "defence 'my_defense': write it as package.module:ClassName."),
    ],
)
def test_the_app_refuses_a_bad_module_at_start_up(modules, spec, message):
    env = {**os.environ, "PYTHONPATH": str(modules), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "app.py", "--defense-module", spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=ASSETS.parent,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == f"error: cannot start the playground: {message}\n"


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "broken_defenses:NaNs",
            "defence NaN blend: its purify returned NaN or infinite values; a defence must "
            "return finite embeddings.",
        ),
        (
            "broken_defenses:Doubled",
            "defence Doubled: its purify returned shape (1, 64) for embeddings of shape "
            "(1, 32); a defence must return one embedding of the same size per input.",
        ),
    ],
)
def test_a_defense_returning_nonsense_is_refused_not_counted_right(
    modules, tiny_checkpoint, capsys, spec, message
):
    """A NaN embedding must not pass for the true label (the first one: every NaN score ties)."""
    args = predict_args(tiny_checkpoint, "--defense", spec, "--true-label", "cat")
    assert cli_main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines()[-1] == f"error: {message}"


def test_a_bug_in_a_constructor_is_not_called_a_setting(modules, backbone):
    from clipure_core.purifiers import build_purifier

    load_defense("broken_defenses:Buggy")
    with pytest.raises(TypeError, match="has no len"):
        build_purifier("broken_defenses:Buggy", backbone, "single")
    with pytest.raises(InputError) as refused:
        build_purifier("broken_defenses:Buggy", backbone, "single", strength=2)
    assert str(refused.value) == (
        "broken_defenses:Buggy: unsupported setting (got an unexpected keyword argument "
        "'strength')."
    )


def test_what_a_module_prints_at_import_keeps_the_json_clean(modules, tiny_checkpoint, capsys):
    args = predict_args(tiny_checkpoint, "--defense", "chatty_defense:Chatty", "--json")
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert list(json.loads(captured.out)["probabilities"]["clean"]) == [
        "undefended",
        "chatty_defense:Chatty",
    ]
    assert "chatty_defense imported\n" in captured.err
