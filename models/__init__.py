"""Model registry: ``--model <name>`` loads ``models/<name>_model.py:<Name>Model``."""

from __future__ import annotations

import argparse
import sys

from models.base_model import BaseModel
from models.generator_base import find_generator, generator_types
from util.registry import available, find_class

__all__ = [
    "BaseModel",
    "create_model",
    "find_generator",
    "find_model",
    "generator_types",
    "model_names",
]


def model_names() -> list[str]:
    """Names accepted by ``--model``."""
    return available(sys.modules[__name__], "model")


def find_model(name: str) -> type[BaseModel]:
    """The model class registered as ``name``; ``ValueError`` lists the choices."""
    return find_class(sys.modules[__name__], "model", name, BaseModel, "--model")


def create_model(opt: argparse.Namespace) -> BaseModel:
    """Instantiate the model chosen by ``opt.model``."""
    model = find_model(opt.model)(opt)
    if getattr(opt, "verbose", False):
        print(f"model [{type(model).__name__}] was created")
    return model
