"""Face identity for IP-Adapter FaceID-Plus-v2 (method §5.1-5.2): the normed 512-d ArcFace embedding
and the aligned 224² face crop (RGB) for the CLIP image encoder.

Two detectors, one recogniser path:
* ``insightface`` (default): ``FaceAnalysis(name, root)`` (buffalo_l: SCRFD detector with 5 landmarks
  + ArcFace), the real pipeline.
* ``haar``: OpenCV's pretrained frontal-face Haar cascade (shipped in ``cv2.data`` by
  opencv-python-headless 4.x) finds the face and a canonical 5-point layout inside its box is used
  for alignment; the ArcFace ONNX is still loaded through insightface's ``model_zoo``. Used by the
  offline ``tiny`` preset so that "no face in the image" stays a real check.
The largest face is used. Unlike the reference (method §5.2), the crop given to CLIP is RGB.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import threestudio
from threestudio.utils.base import BaseObject
from threestudio.utils.errors import MissingModelError, UserError

# ArcFace 112x112 reference landmarks (insightface face_align.arcface_dst), as fractions of the box.
_ARCFACE_DST = (
    np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
        dtype=np.float32,
    )
    / 112.0
)


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3].

    Raises:
        UserError: missing, unreadable or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"face image not found: {path}")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read face image {path}: {e}") from None


@dataclass
class FaceID:
    """``embedding`` [512] float32 L2-normalised ArcFace; ``crop`` [224, 224, 3] uint8 RGB aligned
    face; ``bbox`` [4] x0 y0 x1 y1 in pixels of the source image."""

    embedding: np.ndarray
    crop: np.ndarray
    bbox: np.ndarray


@threestudio.register("insightface-face-id")
class FaceIdentity(BaseObject):
    @dataclass
    class Config:
        detector: str = "insightface"
        """``insightface`` (SCRFD of the model pack) or ``haar`` (OpenCV cascade, tiny preset)."""
        model_name: str = "buffalo_l"
        """insightface model pack (SCRFD detector + ArcFace recogniser)."""
        root: str = "${oc.env:INSIGHTFACE_HOME,'~/.insightface'}"
        """insightface root; the model pack lives in ``<root>/models/<model_name>/``."""
        det_size: int = 640
        """Detector input size in pixels."""
        crop_size: int = 224
        """Side of the aligned face crop given to the CLIP image encoder, pixels."""

    def model_dir(self) -> Path:
        return Path(os.path.expanduser(self.cfg.root)) / "models" / self.cfg.model_name

    def missing(self) -> list[str]:
        """Human-readable list of what is missing (empty when ready)."""
        d = self.model_dir()
        if not glob.glob(str(d / "*.onnx")):
            return [
                f"insightface model pack '{self.cfg.model_name}' (expected ONNX files in {d}); on a machine "
                f'with network access run: python -c "from insightface.app import FaceAnalysis; '
                f"FaceAnalysis(name='{self.cfg.model_name}', root='{self.cfg.root}')\" and copy that folder"
            ]
        return []

    def configure(self) -> None:
        self._app = None
        self._rec = None

    def _load(self):
        miss = self.missing()
        if miss:
            raise MissingModelError("missing model: " + miss[0])
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        if self.cfg.detector == "insightface":
            from insightface.app import FaceAnalysis

            self._app = FaceAnalysis(
                name=str(self.model_dir()),
                root=os.path.expanduser(self.cfg.root),
                providers=providers,
                allowed_modules=["detection", "recognition"],
            )
            self._app.prepare(ctx_id=0, det_size=(self.cfg.det_size, self.cfg.det_size))
        elif self.cfg.detector == "haar":
            from insightface.model_zoo import model_zoo

            for f in sorted(glob.glob(str(self.model_dir() / "*.onnx"))):
                m = model_zoo.get_model(f, providers=providers)
                if m is not None and getattr(m, "taskname", "") == "recognition":
                    self._rec = m
                    break
            if self._rec is None:
                raise MissingModelError(f"missing model: no ArcFace recognition ONNX in {self.model_dir()}")
            self._rec.prepare(ctx_id=0)
        else:
            raise UserError(f"unknown face detector {self.cfg.detector!r}: use 'insightface' or 'haar'")

    def __call__(self, image_path: str | Path) -> FaceID:
        """Detect the largest face in the image at ``image_path`` and return its identity.

        Raises:
            UserError: unreadable image, or no face found (names the image).
            MissingModelError: the model pack is not installed.
        """
        from insightface.app.common import Face
        from insightface.utils import face_align

        rgb = load_image_rgb(image_path)
        if self._app is None and self._rec is None:
            self._load()
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        if self._app is not None:
            faces = self._app.get(bgr)
            if not faces:
                raise UserError(
                    f"no face found in {image_path}: use a photo with a clearly visible, roughly frontal face"
                )
            f = max(faces, key=lambda x: (x.bbox[2] - x.bbox[0]) * (x.bbox[3] - x.bbox[1]))
            emb, kps, bbox = f.normed_embedding, f.kps, f.bbox
        else:
            bbox = _haar_largest_face(rgb)
            if bbox is None:
                raise UserError(
                    f"no face found in {image_path}: use a photo with a clearly visible, roughly frontal face"
                )
            x0, y0, x1, y1 = bbox
            kps = _ARCFACE_DST * np.array([x1 - x0, y1 - y0], np.float32) + np.array([x0, y0], np.float32)
            face = Face(bbox=np.asarray(bbox, np.float32), kps=kps, det_score=1.0)
            raw = self._rec.get(bgr, face)
            emb = raw / (np.linalg.norm(raw) + 1e-12)
        crop_bgr = face_align.norm_crop(bgr, landmark=np.asarray(kps, np.float32), image_size=self.cfg.crop_size)
        return FaceID(
            embedding=np.asarray(emb, np.float32),
            crop=np.ascontiguousarray(crop_bgr[..., ::-1]),
            bbox=np.asarray(bbox, np.float32),
        )


def _haar_largest_face(rgb: np.ndarray):
    import cv2

    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    s = 640.0 / max(gray.shape)
    small = cv2.resize(gray, None, fx=s, fy=s) if s < 1 else gray
    s = s if s < 1 else 1.0
    faces = cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda r: r[2] * r[3])
    return np.array([x, y, x + w, y + h], np.float32) / s
