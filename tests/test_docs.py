"""Every CLI command and every config key is documented in the README (as datasette tests its settings)."""

from __future__ import annotations

import argparse

from pydantic import BaseModel

from tenantledger.cli import build_parser
from tenantledger.config import Config
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_config_key_is_documented() -> None:
    missing = [k for k in _keys(Config) if f"`{k}`" not in README]
    assert not missing


def test_every_command_and_flag_is_documented_and_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert f"tenantledger {name}" in README, name
        assert p.format_help()
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in README, (name, opt)
