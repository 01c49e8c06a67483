"""How a run's conditions read in the summary and the report."""

from __future__ import annotations


def condition_label(entry: dict, results: dict) -> str:
    """A robust entry's condition: its threat, with its attack when the run used several."""
    attacks = {item["attack"] for item in results["robust"]}
    return f"{entry['attack']} ({entry['threat']})" if len(attacks) > 1 else entry["threat"]
