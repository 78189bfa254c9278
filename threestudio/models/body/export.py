"""Export a compact body-template file: ``python -m threestudio.models.body.export [anny|smplx] OUT.npz``.

The file loads in milliseconds (``system.body.template_path=OUT.npz``) and carries everything a
run needs (vertices, faces, joints, skinning weights, keypoints, the facial expression blendshapes),
so machines without the body package (or without the 100 MB anny data) can still train and animate.
"""

from __future__ import annotations

import argparse
import time

import threestudio


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("body", nargs="?", default="anny", help="body plugin kind: anny or smplx")
    ap.add_argument("out", help="output .npz path")
    args = ap.parse_args(argv)
    t = time.time()
    tpl = threestudio.find(f"{args.body}-body")({"use_cache": True}).template()
    tpl.save(args.out)
    e = tpl.expressions
    kind = {"arkit": "ARKit blendshapes", "smplx": "SMPL-X expression directions"}
    expr = f"{len(e)} {kind[e.kind]}" if e is not None else "no expressions"
    print(
        f"wrote {args.out}: {tpl.vertices.shape[0]} vertices, {tpl.faces.shape[0]} faces, "
        f"{tpl.joints.shape[0]} joints, {expr}, height {tpl.height:.3f} ({time.time() - t:.1f} s)"
    )


if __name__ == "__main__":
    main()
