"""docs/configuration.md is generated from the config fields and must not drift from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tusserver.config import TusServerConfig
from tusserver.configdoc import REGENERATE_COMMAND, env_var, render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _committed() -> str:
    assert DOC.is_file(), f"{DOC} is missing; generate it with: {REGENERATE_COMMAND}"
    return DOC.read_text(encoding="utf-8")


def test_configuration_doc_is_up_to_date() -> None:
    assert _committed() == render_markdown(), (
        "docs/configuration.md is out of date with tusserver/config.py; "
        f"regenerate it with: {REGENERATE_COMMAND}"
    )


def test_every_key_is_documented() -> None:
    text = _committed()
    missing = [
        f.name
        for f in dataclasses.fields(TusServerConfig)
        if f"`{f.name}`" not in text or f"`{env_var(f.name)}`" not in text
    ]
    assert not missing, f"not in docs/configuration.md: {missing}; run: {REGENERATE_COMMAND}"


def test_every_key_has_a_doc_line() -> None:
    undocumented = [
        f.name for f in dataclasses.fields(TusServerConfig) if not f.metadata.get("doc")
    ]
    assert not undocumented, f"config fields without metadata['doc']: {undocumented}"
