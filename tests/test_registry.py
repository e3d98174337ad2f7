"""Models, datasets and generator types are found by name through one registry mechanism;
unknown names list the choices."""

import ast
from pathlib import Path

import pytest

import data
import models
from models.diffusion_generator import DiffusionGenerator
from models.gan_generator import GanGenerator
from models.generator_base import GENERATORS, Generator, find_generator, generator_types
from util.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_lookup_by_name():
    assert models.find_model("pix2pix").__name__ == "Pix2PixModel"
    assert data.find_dataset("vertebra").__name__ == "VertebraDataset"
    assert set(generator_types()) >= {"gan", "diffusion"}
    assert find_generator("gan") is GanGenerator
    assert find_generator("diffusion") is DiffusionGenerator


@pytest.mark.parametrize(
    "lookup,flag,choice",
    [
        (models.find_model, "--model", "pix2pix"),
        (data.find_dataset, "--dataset_mode", "vertebra"),
        (find_generator, "--netG_type", "gan"),
    ],
)
def test_unknown_name_names_the_flag_and_lists_choices(lookup, flag, choice):
    with pytest.raises(ValueError, match=choice) as exc:
        lookup("no_such_thing")
    assert "no_such_thing" in str(exc.value) and flag in str(exc.value)


def test_register_from_any_module_and_refuse_clashes():
    reg: Registry[Generator] = Registry("--netG_type", Generator, package="models", suffix="x")

    @reg.register("mine")
    class Mine(GanGenerator):
        pass

    assert reg.get("mine") is Mine and reg.names() == ["mine"]
    assert reg.register("mine")(Mine) is Mine  # the same class again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("mine")(GanGenerator)
    with pytest.raises(TypeError, match="Generator"):
        reg.register("other")(int)
    with pytest.raises(ValueError, match="registered twice"):
        GENERATORS.register("gan")(Mine)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize(
    "base,members",
    [
        ("models/generator_base.py", "models/*_generator.py"),
        ("models/base_model.py", "models/*_model.py"),
        ("data/base_dataset.py", "data/*_dataset.py"),
    ],
)
def test_no_static_import_of_the_members(base, members):
    """The registry finds members with importlib: a base module never imports them."""
    imported = _imported_modules(ROOT / base)
    for path in ROOT.glob(members):
        module = f"{path.parent.name}.{path.stem}"
        if path.name != Path(base).name:
            assert module not in imported, f"{base} imports {module}"
