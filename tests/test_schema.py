"""The JSON schema is generated from the config dataclasses: the committed copy is what the
generator writes, and its defaults, filled in by Snakemake, are the dataclasses' defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from toolrl import schema
from toolrl.config import from_snakemake, load, to_dict

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def test_the_committed_schema_is_not_stale():
    assert COMMITTED.read_text() == schema.render(), (
        "workflow/schemas/config.schema.yaml is stale: run "
        "`python -m toolrl schema > workflow/schemas/config.schema.yaml`"
    )


@pytest.mark.parametrize("name", ["config.yaml", *sorted(p.name for p in (ROOT / "config").glob("*.yaml"))])
def test_defaults_snakemake_fills_are_the_dataclasses(name, tmp_path):
    data = (
        yaml.safe_load((ROOT / name).read_text())
        if name == "config.yaml"
        else yaml.safe_load((ROOT / "config" / name).read_text())
    )
    data.pop("results_dir", None)
    if data.get("world", {}).get("backend") == "bfcl":  # content_ood without a user's ACEBench checkout
        bfcl = data["world"].setdefault("bfcl", {})
        bfcl.setdefault("acebench", {})["path"] = None
        bfcl["held_out_classes"] = ["TravelAPI"]
    filled = copy.deepcopy(data)
    validate(filled, str(COMMITTED))
    assert to_dict(from_snakemake(filled)) == to_dict(load(None, data))


def test_help_text_reaches_the_schema():
    props = yaml.safe_load(COMMITTED.read_text())["properties"]
    assert props["world"]["properties"]["chain_prob"]["description"].startswith("share of turns")
    assert props["signals"]["properties"]["ops"]["properties"]["k"]["minimum"] == 1
    assert props["sweep"]["properties"]["signals"]["items"]["enum"][0] == "ctrl"
