"""Start-up settings from the command line, with environment variables as defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clipure_core import DEFAULT_MODEL, DEFAULT_WEIGHTS, RANDOM_WEIGHTS
from clipure_core.purifiers import load_defense

DEFAULT_PRETRAINED = DEFAULT_WEIGHTS
ENV_PREFIX = "CLIPURE_"
EXAMPLE_CACHING = ("eager", "lazy")


def is_random(pretrained: str | None) -> bool:
    """Whether load_backbone gives random weights for `pretrained` ('random', '' or None)."""
    return (pretrained or RANDOM_WEIGHTS) == RANDOM_WEIGHTS


@dataclass(frozen=True)
class AppConfig:
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    queue_size: int = 32
    mcp: bool = False
    examples: str = "eager"
    defense_modules: tuple[str, ...] = ()  # package.module:Class defences the app adds
    any_backbone: bool = False  # the page may name backbones outside the catalog

    @property
    def random_weights(self) -> bool:
        """As load_backbone reads `pretrained` (it refuses 'none')."""
        return is_random(self.pretrained)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _queue_size(value: str) -> int:
    """How many jobs may wait in the queue: a whole number >= 1 (more are turned away)."""
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return size


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The options of `python app.py`; CLIPURE_MODEL, CLIPURE_PRETRAINED, CLIPURE_DEVICE,
    CLIPURE_HOST, CLIPURE_PORT, CLIPURE_SHARE, CLIPURE_QUEUE_SIZE, CLIPURE_MCP, CLIPURE_EXAMPLES,
    CLIPURE_ANY_BACKBONE are the defaults of the matching options; CLIPURE_DEFENSE_MODULES
    (comma-separated) names defences of one's own before any `--defense-module`.
    GRADIO_SERVER_NAME (set by Hugging Face Spaces) is the host's default when CLIPURE_HOST is
    not set."""
    env = os.environ if environ is None else environ

    def default(name: str, fallback):
        return env.get(ENV_PREFIX + name, fallback)

    parser = argparse.ArgumentParser(prog="python app.py", description="CLIPure playground")
    parser.add_argument("--model", default=default("MODEL", DEFAULT_MODEL))
    parser.add_argument(
        "--pretrained",
        default=default("PRETRAINED", DEFAULT_PRETRAINED),
        help="open_clip tag, checkpoint file, hf-hub:org/repo, or 'random' (offline checks)",
    )
    parser.add_argument("--device", default=default("DEVICE", None), help="cpu or cuda")
    parser.add_argument(
        "--host",
        default=default("HOST", env.get("GRADIO_SERVER_NAME", "127.0.0.1")),
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all networks)",
    )
    parser.add_argument("--port", type=int, default=int(default("PORT", 7860)))
    parser.add_argument(
        "--share",
        action="store_true",
        default=_flag(default("SHARE", "")),
        help="create a public gradio.live link (off unless asked)",
    )
    parser.add_argument(
        "--queue-size",
        type=_queue_size,
        default=default("QUEUE_SIZE", "32"),
        help="jobs that may wait for the model (default 32); more get a 'busy' message",
    )
    parser.add_argument(
        "--mcp",
        action="store_true",
        default=_flag(default("MCP", "")),
        help="also serve the playground and the audit as MCP tools (needs gradio[mcp])",
    )
    parser.add_argument(
        "--examples",
        choices=EXAMPLE_CACHING,
        default=default("EXAMPLES", "eager"),
        help="compute the examples' results at start-up (eager, default) or at their first "
        "click (lazy; always lazy under ZeroGPU)",
    )
    parser.add_argument(
        "--defense-module",
        action="append",
        default=[
            spec.strip() for spec in default("DEFENSE_MODULES", "").split(",") if spec.strip()
        ],
        metavar="PACKAGE.MODULE:CLASS",
        help="add a defence of your own: a Purifier subclass from an importable module "
        "(repeatable; also CLIPURE_DEFENSE_MODULES=a.b:C,d.e:F, e.g. in a Space's settings; "
        "the page can only pick defences named here)",
    )
    parser.add_argument(
        "--any-backbone",
        action="store_true",
        default=_flag(default("ANY_BACKBONE", "")),
        help="let the page's columns name any backbone (ARCH:PRETRAINED, local-dir:FOLDER); "
        "without it only the catalog's aliases, so visitors cannot make the server download "
        "weights or probe its folders",
    )
    return parser


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> AppConfig:
    """`python app.py --model ... --pretrained ...` (environment defaults: `build_parser`)."""
    args = build_parser(environ).parse_args(argv)
    return AppConfig(
        args.model,
        args.pretrained,
        args.device,
        args.host,
        args.port,
        args.share,
        args.queue_size,
        args.mcp,
        args.examples,
        tuple(args.defense_module),
        args.any_backbone,
    )


def load_defense_modules(config: AppConfig) -> None:
    """Import the `--defense-module` defences, each `package.module:Class` (InputError
    otherwise: a module without its class must not start an app without the defence). Only
    here: a name in a request is looked up, never imported."""
    for spec in config.defense_modules:
        load_defense(spec)
