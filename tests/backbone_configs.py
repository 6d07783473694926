"""The shipped backbone configs (found, not listed), with the tiny settings each backbone class
declares (``Backbone.tiny``): what the suite adds to a config to run it small without changing
what it is."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

import symtrain.backbones
from symtrain.backbones import Backbone

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def backbone_configs() -> list[Path]:
    return sorted((CONFIGS / "backbone").glob("*.yaml"))


def backbone_settings(config: Path) -> tuple[type[Backbone], dict[str, Any]]:
    """The config's backbone class and its settings."""
    backbone = yaml.safe_load(config.read_text())["model"]["backbone"]
    module, _, name = backbone["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module) if module else symtrain.backbones, name)
    return cls, dict(backbone.get("init_args") or {})


def tiny_args(config: Path) -> list[str]:
    """CLI flags that shrink the config's backbone as its class declares."""
    cls, _ = backbone_settings(config)
    return [f"--model.backbone.init_args.{key}={value}" for key, value in cls.tiny.items()]


def build_tiny(config: Path, in_channels: int = 1) -> Backbone:
    cls, settings = backbone_settings(config)
    return cls(in_channels, **{**settings, **cls.tiny})


def without_backbone_flags(args: list[str]) -> list[str]:
    """``args`` without flags that only some backbones take (a shared TINY's width)."""
    return [arg for arg in args if not arg.startswith("--model.backbone.")]
