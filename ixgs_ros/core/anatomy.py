"""Anatomy labels shared by the whole product: the TotalSegmentator v2 numbering of the vertebrae (the bundled
CT's label map uses it; meshes, benchmarks and the standardization model name vertebrae by it) and the
definition of bone."""
from __future__ import annotations

import re

import numpy as np

__all__ = ["VERTEBRA_LABELS", "VERTEBRA_NAMES", "vertebra_label", "label_name", "BONE_HU"]

#: Bone, everywhere in this product: CT voxels above this many Hounsfield units (with their attenuation).
BONE_HU = 200.0


def _vertebra_table() -> dict[str, int]:
    """TotalSegmentator v2 vertebra labels: sacrum 25, S1 26, L5 27 ... L1 31, T12 32 ... T1 43, C7 44 ... C1 50."""
    table = {"sacrum": 25, "S1": 26}
    table.update({f"L{n}": 32 - n for n in range(5, 0, -1)})      # L5 27 ... L1 31
    table.update({f"T{n}": 44 - n for n in range(12, 0, -1)})     # T12 32 ... T1 43
    table.update({f"C{n}": 51 - n for n in range(7, 0, -1)})      # C7 44 ... C1 50
    return table


#: Vertebra name -> TotalSegmentator v2 label.
VERTEBRA_LABELS: dict[str, int] = _vertebra_table()
_LABEL_NAMES = {v: k for k, v in VERTEBRA_LABELS.items()}


def vertebra_label(name_or_label) -> int:
    """Label of a vertebra given its name (``"T12"``, ``"t12"``, ``"vertebrae_T12"``, ``"sacrum"``) or number."""
    if isinstance(name_or_label, (int, np.integer)) and not isinstance(name_or_label, bool):
        return int(name_or_label)
    s = str(name_or_label).strip()
    if re.fullmatch(r"\d+", s):
        return int(s)
    s = re.sub(r"^vertebrae?_", "", s, flags=re.IGNORECASE)
    key = "sacrum" if s.lower() == "sacrum" else s.upper()
    if key not in VERTEBRA_LABELS:
        raise ValueError(f"unknown vertebra {name_or_label!r}: use a name such as T12, L1, C7, S1, sacrum "
                         "or a label number")
    return VERTEBRA_LABELS[key]


def label_name(label: int) -> str:
    """Vertebra name of a label (``32 -> "T12"``), else ``"label<N>"``."""
    return _LABEL_NAMES.get(int(label), f"label{int(label)}")


#: label -> vertebra name
VERTEBRA_NAMES: dict[int, str] = {label: name for name, label in VERTEBRA_LABELS.items()}
