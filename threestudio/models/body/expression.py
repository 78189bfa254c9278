"""Facial expression blendshapes of a body template, stored compactly (only the vertices each one moves).

Two kinds exist:

* ``"arkit"``: the 52 blendshapes of Apple ARKit (:data:`ARKIT_BLENDSHAPES`), weights in [0, 1], as
  face-capture apps record them (Live Link Face). ``Left``/``Right`` in a name are the *person's* left
  and right (the person's left is at -x in the template world frame).
* ``"smplx"``: SMPL-X expression coefficients (PCA directions, unbounded, typically within ±3), named
  ``expr_000``, ``expr_001``...

Offsets are in the template world frame (normalised body units) and apply to the A-posed template
before skinning: ``v(w) = v + Σ_k w_k B_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from threestudio.utils.typing import Float, Int, Tensor

ARKIT_BLENDSHAPES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft",
    "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)  # fmt: skip
"""The 52 ARKit face blendshape names (``ARFaceAnchor.BlendShapeLocation``), in Apple's alphabetical order."""

ARKIT_GROUPS = ("brow", "eye", "cheek", "nose", "jaw", "mouth", "tongue")
"""Name prefixes that group the ARKit blendshapes (web-viewer folders): brows, eyes, cheeks, nose, jaw,
mouth, tongue."""

EXPRESSION_KINDS = ("arkit", "smplx")


def arkit_group(name: str) -> str:
    """The group (one of :data:`ARKIT_GROUPS`) of an ARKit blendshape name."""
    return next(g for g in ARKIT_GROUPS if name.startswith(g))


@dataclass
class ExpressionBasis:
    """E blendshapes over V template vertices in compressed-sparse-row form.

    Attributes:
        names: E blendshape names (ARKit names, or ``expr_000``... for SMPL-X).
        kind: ``"arkit"`` (weights in [0, 1]) or ``"smplx"`` (unbounded PCA coefficients).
        ptr: [E + 1] int64; the vertices moved by blendshape k are ``index[ptr[k]:ptr[k+1]]``.
        index: [nnz] int64 vertex indices (ascending within each blendshape).
        offsets: [nnz, 3] float32 offsets of those vertices at weight 1, template world frame.
    """

    names: list
    kind: str
    ptr: Int[Tensor, " E1"]
    index: Int[Tensor, " nnz"]
    offsets: Float[Tensor, "nnz 3"]

    def __post_init__(self) -> None:
        if self.kind not in EXPRESSION_KINDS:
            raise ValueError(f"expression kind must be one of {EXPRESSION_KINDS}, got {self.kind!r}")
        n = len(self.index)
        if len(self.ptr) != len(self.names) + 1 or int(self.ptr[-1]) != n or len(self.offsets) != n:
            raise ValueError("inconsistent expression basis: ptr, index and offsets do not match")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_dense(cls, names: list, kind: str, dense: Float[Tensor, "E V 3"]) -> ExpressionBasis:
        """Keep, per blendshape, exactly the vertices with a non-zero offset (no threshold: exact)."""
        moved = (dense != 0).any(-1)  # E V
        counts = moved.sum(1)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        k, v = moved.nonzero(as_tuple=True)  # row-major: by blendshape, then vertex
        return cls(list(names), kind, ptr, v.long(), dense[k, v].float())

    def dense(self, num_vertices: int) -> Float[Tensor, "E V 3"]:
        """[E, V, 3] dense offsets (zeros where a blendshape does not move a vertex)."""
        out = torch.zeros(len(self), num_vertices, 3, dtype=self.offsets.dtype)
        k = torch.repeat_interleave(torch.arange(len(self)), self.ptr.diff())
        out[k, self.index] = self.offsets
        return out

    def moved_vertices(self) -> Int[Tensor, " M"]:
        """Sorted indices of the vertices any blendshape moves."""
        return torch.unique(self.index)

    def blendshape(self, name: str) -> tuple[Int[Tensor, " n"], Float[Tensor, "n 3"]]:
        """(vertex indices, offsets) of one blendshape.

        Raises:
            KeyError: no blendshape of that name.
        """
        k = self.names.index(name) if name in self.names else None
        if k is None:
            raise KeyError(f"no blendshape {name!r}; this template has {len(self)} ({self.kind})")
        a, b = int(self.ptr[k]), int(self.ptr[k + 1])
        return self.index[a:b], self.offsets[a:b]

    def to_arrays(self) -> dict:
        """Plain arrays for a template ``.npz`` (see :meth:`from_arrays`)."""
        return {
            "expression_names": [str(n) for n in self.names],
            "expression_kind": self.kind,
            "expression_ptr": self.ptr,
            "expression_index": self.index,
            "expression_offsets": self.offsets,
        }

    @classmethod
    def from_arrays(cls, z) -> ExpressionBasis | None:
        """Read the arrays of :meth:`to_arrays` from a mapping; None when it has none."""
        if "expression_names" not in z:
            return None
        return cls(
            [str(s) for s in z["expression_names"].tolist()],
            str(z["expression_kind"]),
            torch.as_tensor(z["expression_ptr"]).long(),
            torch.as_tensor(z["expression_index"]).long(),
            torch.as_tensor(z["expression_offsets"]).float(),
        )
