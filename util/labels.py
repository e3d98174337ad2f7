"""Vertebra label ids <-> names for VerSe and TotalSegmentator v2, and conversion between them.

* **VerSe** (the data root's ``label/`` folder): 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6,
  26 the sacrum (named ``S1`` here, its first segment), 28 T13 (a supernumerary thoracic
  vertebra; 27, the coccyx, has no counterpart and is not listed).
* **TotalSegmentator v2, task ``total``**: 26 S1, 27 L5, 28 L4, 29 L3, 30 L2, 31 L1,
  32 T12, 33 T11, ..., 43 T1, 44 C7, ..., 50 C1 (the ids run upwards from the sacrum, so
  ``T_k = 44 - k`` and ``C_k = 51 - k``). TotalSegmentator has no T13 or L6.

Names are ``"C1"``, ..., ``"T13"``, ``"L1"``, ..., ``"L6"``, ``"S1"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import overload

import numpy as np

#: Label-map names accepted by :func:`id_to_name`, :func:`name_to_id` and the CLIs.
LABEL_MAP_NAMES = ("verse", "totalseg")


def _verse_ids() -> dict[int, str]:
    ids = {k: f"C{k}" for k in range(1, 8)}
    ids.update({7 + k: f"T{k}" for k in range(1, 13)})
    ids.update({19 + k: f"L{k}" for k in range(1, 7)})
    ids[26] = "S1"
    ids[28] = "T13"
    return ids


def _totalseg_ids() -> dict[int, str]:
    ids = {26: "S1"}
    ids.update({32 - k: f"L{k}" for k in range(1, 6)})  # 31 L1 ... 27 L5
    ids.update({44 - k: f"T{k}" for k in range(1, 13)})  # 43 T1 ... 32 T12
    ids.update({51 - k: f"C{k}" for k in range(1, 8)})  # 50 C1 ... 44 C7
    return ids


#: VerSe label id -> vertebra name.
VERSE_ID_TO_NAME: Mapping[int, str] = MappingProxyType(_verse_ids())
#: TotalSegmentator v2 ``total`` label id -> vertebra name.
TOTALSEG_ID_TO_NAME: Mapping[int, str] = MappingProxyType(_totalseg_ids())
VERSE_NAME_TO_ID: Mapping[str, int] = MappingProxyType({v: k for k, v in VERSE_ID_TO_NAME.items()})
TOTALSEG_NAME_TO_ID: Mapping[str, int] = MappingProxyType(
    {v: k for k, v in TOTALSEG_ID_TO_NAME.items()}
)

_ID_TO_NAME = {"verse": VERSE_ID_TO_NAME, "totalseg": TOTALSEG_ID_TO_NAME}
_NAME_TO_ID = {"verse": VERSE_NAME_TO_ID, "totalseg": TOTALSEG_NAME_TO_ID}


def _check_map(label_map: str) -> None:
    if label_map not in _ID_TO_NAME:
        raise ValueError(f"unknown label_map {label_map!r}; choose one of {LABEL_MAP_NAMES}")


def id_to_name_map(label_map: str = "verse") -> Mapping[int, str]:
    """The id -> name mapping of ``label_map`` (``"verse"`` or ``"totalseg"``)."""
    _check_map(label_map)
    return _ID_TO_NAME[label_map]


def id_to_name(label_id: int, label_map: str = "verse") -> str:
    """Vertebra name of ``label_id`` in ``label_map``; ``ValueError`` if it is no vertebra."""
    _check_map(label_map)
    try:
        return _ID_TO_NAME[label_map][int(label_id)]
    except KeyError:
        raise ValueError(f"label id {label_id} is not a vertebra in the {label_map} map") from None


def name_to_id(name: str, label_map: str = "verse") -> int:
    """Label id of vertebra ``name`` (e.g. ``"L1"``) in ``label_map``."""
    _check_map(label_map)
    try:
        return _NAME_TO_ID[label_map][name.upper()]
    except KeyError:
        raise ValueError(f"vertebra {name!r} has no id in the {label_map} map") from None


@overload
def totalseg_to_verse(ids: int) -> int: ...
@overload
def totalseg_to_verse(ids: np.ndarray) -> np.ndarray: ...
def totalseg_to_verse(ids: int | np.ndarray) -> int | np.ndarray:
    """Convert TotalSegmentator v2 ``total`` vertebra ids to VerSe ids.

    * an ``int``: the VerSe id; ``ValueError`` if it is not a TotalSegmentator vertebra.
    * an integer array (e.g. a whole label volume): same shape and dtype, every vertebra id
      converted and **every other id (organs, ribs, background) set to 0**, so the result is a
      pure VerSe vertebra mask.
    """
    if isinstance(ids, np.ndarray):
        if not np.issubdtype(ids.dtype, np.integer):
            if not np.array_equal(ids, np.round(ids)):
                raise ValueError("totalseg_to_verse expects integer label ids")
        lut = np.zeros(256, dtype=np.int64)
        for ts_id, name in TOTALSEG_ID_TO_NAME.items():
            lut[ts_id] = VERSE_NAME_TO_ID[name]
        flat = ids.astype(np.int64)
        inside = (flat >= 0) & (flat < lut.size)
        out = np.where(inside, lut[np.clip(flat, 0, lut.size - 1)], 0)
        return out.astype(ids.dtype)
    return VERSE_NAME_TO_ID[id_to_name(int(ids), "totalseg")]
