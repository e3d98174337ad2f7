"""Model registry: ``--model <name>`` selects the class registered as ``<name>``
(``@MODELS.register("pix2pix")`` in ``models/pix2pix_model.py``); generator types likewise with
``--netG_type`` (``models/generator_base.py``)."""

from __future__ import annotations

import argparse

from models.base_model import MODELS, BaseModel
from models.generator_base import GENERATORS, find_generator, generator_types

__all__ = [
    "GENERATORS",
    "MODELS",
    "BaseModel",
    "create_model",
    "find_generator",
    "find_model",
    "generator_types",
    "model_names",
]


def model_names() -> list[str]:
    """Names accepted by ``--model``."""
    return MODELS.names()


def find_model(name: str) -> type[BaseModel]:
    """The model class registered as ``name``; ``ValueError`` lists the choices."""
    return MODELS.get(name)


def create_model(opt: argparse.Namespace) -> BaseModel:
    """Instantiate the model chosen by ``opt.model``."""
    model = find_model(opt.model)(opt)
    if getattr(opt, "verbose", False):
        print(f"model [{type(model).__name__}] was created")
    return model
