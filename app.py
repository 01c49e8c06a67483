"""Entry point of the CLIPure playground (also the Hugging Face Space's app_file).

python app.py [--model ViT-B-32] [--pretrained openai|FILE|hf-hub:org/repo|random]
              [--device cpu|cuda] [--host 127.0.0.1] [--port 7860] [--share] [--queue-size 32]
              [--examples eager|lazy] [--mcp] [--defense-module package.module:Class ...]
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from app.config import load_defense_modules, parse_config
from clipure_core import InputError, WeightsUnavailableError, load_backbone


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    if config.mcp and importlib.util.find_spec("mcp") is None:
        print('error: --mcp needs gradio\'s MCP extra: pip install "gradio[mcp]"', file=sys.stderr)
        return 2
    try:  # the defences and the start-up model first: fail in seconds, not in the UI
        load_defense_modules(config)
        load_backbone(config.model, config.pretrained, device=config.device)
    except (InputError, WeightsUnavailableError) as error:
        print(f"error: cannot start the playground: {error}", file=sys.stderr)
        return 2
    from app.ui import build_demo, launch_options

    # One line per request: its outcome, counts and timings (never labels, images or paths).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)
    demo = build_demo(config)
    demo.launch(**launch_options(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
