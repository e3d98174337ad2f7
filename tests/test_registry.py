"""Models, datasets and generator types are found by name; unknown names list the choices."""

import pytest

import data
import models
from models.generator_base import Generator, find_generator, generator_types


def test_lookup_by_name():
    assert models.find_model("pix2pix").__name__ == "Pix2PixModel"
    assert data.find_dataset("vertebra").__name__ == "VertebraDataset"
    assert set(generator_types()) >= {"gan", "diffusion"}
    for name in ("gan", "diffusion"):
        cls = find_generator(name)
        assert issubclass(cls, Generator) and cls.name == name


@pytest.mark.parametrize(
    "lookup,choice",
    [
        (models.find_model, "pix2pix"),
        (data.find_dataset, "vertebra"),
        (find_generator, "gan"),
    ],
)
def test_unknown_name_lists_choices(lookup, choice):
    with pytest.raises(ValueError, match=choice) as exc:
        lookup("no_such_thing")
    assert "no_such_thing" in str(exc.value)
