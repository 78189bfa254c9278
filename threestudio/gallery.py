"""``python -m threestudio.gallery``: a gallery of avatars, the whole pipeline (``run.sh``) for every
(prompt, portrait) pair, one avatar per worker at a time, on Dask distributed.

    python -m threestudio.gallery                                  # the paper's lists, every local GPU
    python -m threestudio.gallery --prompts P.txt --images I.txt --out outputs/my_gallery
    python -m threestudio.gallery --tiny --workers 2               # offline CPU preset, 2 processes
    python -m threestudio.gallery --scheduler tcp://head:8786      # any running Dask cluster
    python -m threestudio.gallery --limit 8 s1:trainer.max_steps=1200   # run.sh overrides for every avatar

Engines: on one machine a dask-cuda ``LocalCUDACluster`` (one worker per GPU, pinned to it), or a plain
``LocalCluster`` of ``--workers`` processes for the CPU (``--tiny``) preset; with ``--scheduler`` any
Dask cluster whose workers run one task at a time (``dask cuda worker``, dask-jobqueue's
``SLURMCluster``), with this repository and ``--out`` on a file system every worker sees.

Each pair runs ``bash run.sh --run-dir OUT/<pair>`` in a subprocess (its log in ``OUT/<pair>/gallery.log``,
its outcome in ``OUT/<pair>/result.json``). A pair whose avatar was finished by an earlier run is skipped;
a failing pair (no face in the portrait, out of memory, ...) is reported and the others go on. At the
end: ``OUT/summary.csv``, the same table printed, and ``OUT/contact_sheet.png`` (the front view of every
turntable). Exit status: 0 when every avatar exists, 1 when some pair failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path, atomic_write_text, read_first_frame

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("prompt", "portrait", "status", "minutes", "avatar", "turntable", "run_dir", "error")
"""Columns of ``summary.csv`` (minutes of the run that made the avatar; paths absolute)."""


@dataclass(frozen=True)
class Pair:
    """One avatar to make: its text ``prompt``, the ``portrait`` image (absolute path) and ``key``, the
    name of its folder under ``--out`` (prompt, portrait and run options decide it, so an edited list
    still finds the avatars it already has)."""

    prompt: str
    portrait: str
    key: str


def _entries(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{what} list not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def read_pairs(prompts: str | Path, images: str | Path, options: list[str]) -> list[Pair]:
    """The (prompt, portrait) pairs of two lists, one entry per line, in the same order (blank lines and
    ``#`` comments skipped; a portrait path is relative to its list's folder). ``options`` (run.sh flags
    and overrides) enter the pair keys.

    Raises:
        UserError: a list is missing or empty, the counts differ, or portraits do not exist.
    """
    prompts, images = Path(prompts), Path(images)
    texts, pics = _entries(prompts, "prompt"), _entries(images, "portrait")
    if not texts:
        raise UserError(f"{prompts}: no prompts (one per line)")
    if len(texts) != len(pics):
        raise UserError(
            f"{prompts} has {len(texts)} prompts but {images} has {len(pics)} portraits: give one portrait "
            "per prompt, line by line"
        )
    paths = [(images.parent / p).resolve() for p in pics]
    missing = [f"line {i + 1}: {p}" for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise UserError(f"{images}: {len(missing)} portrait(s) not found: " + "; ".join(missing[:5]))
    return [Pair(t, str(p), pair_key(t, p, options)) for t, p in zip(texts, paths, strict=True)]


def pair_key(prompt: str, portrait: Path, options: list[str]) -> str:
    """``<prompt slug>__<portrait stem>__<hash of prompt, portrait and options>``: a folder name."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48] or "prompt"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", portrait.stem)[:24]
    digest = hashlib.sha1("\0".join([prompt, str(portrait), *options]).encode()).hexdigest()[:8]
    return f"{slug}__{stem}__{digest}"


def finished(run_dir: Path) -> dict | None:
    """The ``result.json`` of a pair whose avatar an earlier run finished (and that still exists), else None."""
    try:
        res = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return res if res.get("status") == "done" and Path(res.get("avatar", "")).is_file() else None


def run_pair(pair: dict, run_dir: str, flags: list[str], overrides: list[str], threads: int = 0) -> dict:
    """Make one avatar: ``bash run.sh <flags> --run-dir <run_dir> <prompt> <portrait> <overrides>`` (a Dask
    task; runs on a worker). A worker that dask-cuda pinned to GPUs (``CUDA_VISIBLE_DEVICES``) gives the
    run its first one; ``threads`` > 0 caps the run's CPU threads. Never raises for a failed run: returns
    the summary row (:data:`COLUMNS`), also written to ``<run_dir>/result.json``."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if env.get("CUDA_VISIBLE_DEVICES"):
        env["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"].split(",")[0]
    if threads > 0:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = ["bash", str(REPO / "run.sh"), *flags, "--run-dir", str(out), pair["prompt"], pair["portrait"], *overrides]
    t0 = time.time()
    with open(out / "gallery.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    avatar, video = out / "stage3/save/avatar.ply", out / "stage3/save/turntable.mp4"
    ok = rc == 0 and avatar.is_file()
    row = {
        "prompt": pair["prompt"],
        "portrait": pair["portrait"],
        "status": "done" if ok else "failed",
        "minutes": round((time.time() - t0) / 60.0, 2),
        "avatar": str(avatar) if ok else "",
        "turntable": str(video) if ok and video.is_file() else "",
        "run_dir": str(out),
        "error": "" if ok else _last_error(out / "gallery.log", rc),
    }
    atomic_write_text(out / "result.json", json.dumps(row, indent=1) + "\n")
    return row


def _last_error(log: Path, rc: int) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [f"exit status {rc}"])[-1][:300]


def start_client(args):
    """A Dask client: on ``--scheduler``'s cluster, else a local cluster (dask-cuda on GPUs). Returns
    ``(client, what)``, ``what`` a line that describes the workers."""
    import logging

    from distributed import Client, LocalCluster

    if args.scheduler:
        client = Client(args.scheduler, timeout="60s")
        return client, f"{len(client.scheduler_info()['workers'])} workers of {args.scheduler}"
    # the local workers (processes started from this one) import this package to run run_pair
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    gpus = 0 if args.tiny else _cuda_devices()
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise UserError(
                "this machine has GPUs but dask-cuda is not installed: pip install dask-cuda (see "
                "requirements.txt), or pass --scheduler of a running Dask cluster"
            ) from None
        n = min(args.workers or gpus, gpus)
        cluster = LocalCUDACluster(
            n_workers=n, threads_per_worker=1, memory_limit=0, dashboard_address=":0", silence_logs=logging.ERROR
        )
        what = f"{n} GPU workers (dask-cuda LocalCUDACluster)"
    else:
        n = args.workers or 1
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            memory_limit=0,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        what = f"{n} CPU workers (dask LocalCluster)"
    client = Client(cluster)
    link = getattr(cluster, "dashboard_link", "")
    return client, what + (f", dashboard {link}" if link else "")


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA: CPU workers
        return 0


def run_flags(args) -> list[str]:
    """The run.sh options every avatar of the gallery gets (``--tiny``, ``--specular``)."""
    return (["--tiny"] if args.tiny else []) + (["--specular"] if args.specular else [])


def run_gallery(args, pairs: list[Pair]) -> list[dict]:
    """Run the pairs not finished yet on Dask and return every pair's summary row, in list order."""
    from distributed import as_completed

    out = Path(args.out).resolve()
    rows: dict[str, dict] = {}
    todo = []
    for p in pairs:
        earlier = finished(out / p.key)
        if earlier:
            rows[p.key] = {**earlier, "status": "skipped"}
        else:
            todo.append(p)
    print(f"gallery: {len(pairs)} pairs, {len(pairs) - len(todo)} finished earlier (skipped), {len(todo)} to make")
    if not todo:
        return [rows[p.key] for p in pairs]
    client, what = start_client(args)
    try:
        print(f"gallery: running on {what}", flush=True)
        workers = max(1, len(client.scheduler_info()["workers"]))
        threads = max(1, (os.cpu_count() or 1) // workers) if args.tiny else 0  # CPU runs share the cores
        flags = run_flags(args)
        futures = {
            client.submit(
                run_pair, asdict(p), str(out / p.key), flags, args.overrides, threads, key=f"avatar-{p.key}", pure=False
            ): p
            for p in todo
        }
        for k, fut in enumerate(as_completed(futures), 1):
            p = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # the worker died or the task could not run: this pair only
                row = {c: "" for c in COLUMNS} | {"prompt": p.prompt, "portrait": p.portrait, "status": "failed"}
                row |= {"run_dir": str(out / p.key), "error": f"{type(e).__name__}: {e}"}
            rows[p.key] = row
            tail = row["avatar"] if row["status"] == "done" else row["error"]
            print(
                f"[{k}/{len(todo)}] {row['status']:6s} {row['minutes']:>6} min  {p.prompt[:50]} | "
                f"{Path(p.portrait).name} -> {tail}",
                flush=True,
            )
    finally:
        client.close()
        if not args.scheduler and client.cluster is not None:
            client.cluster.close()
    return [rows[p.key] for p in pairs]


def write_summary(out: Path, rows: list[dict]) -> str:
    """``out/summary.csv`` (atomically) and the same table as text (returned)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows([{c: r.get(c, "") for c in COLUMNS} for r in rows])
    atomic_write_text(out / "summary.csv", buf.getvalue())
    shown = [
        (r["prompt"][:44], Path(r["portrait"]).name, r["status"], str(r["minutes"]), r["avatar"] or r["error"])
        for r in rows
    ]
    head = ("prompt", "portrait", "status", "min", "avatar / error")
    widths = [max(len(x[i]) for x in [head, *shown]) for i in range(4)]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(x[:4], widths, strict=True)) + "  " + x[4] for x in [head, *shown]]
    return "\n".join(lines)


def contact_sheet(out: Path, rows: list[dict], tile: int = 256) -> Path:
    """``out/contact_sheet.png``: the first turntable frame (the front view) of every pair, captioned
    with its prompt, portrait and status; a grey tile where there is no avatar."""
    from PIL import Image, ImageDraw

    cols = max(1, math.ceil(math.sqrt(len(rows))))
    cap = 34
    sheet = Image.new("RGB", (cols * tile, math.ceil(len(rows) / cols) * (tile + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        x, y = (i % cols) * tile, (i // cols) * (tile + cap)
        img, note = Image.new("RGB", (tile, tile), (128, 128, 128)), r["status"]
        if r.get("turntable") and Path(r["turntable"]).is_file():
            try:
                img = Image.fromarray(read_first_frame(r["turntable"])).resize((tile, tile))
            except UserError:  # one unreadable video does not cost the sheet
                note += ", video unreadable"
        sheet.paste(img, (x, y))
        draw.text((x + 4, y + tile + 2), r["prompt"][:40], fill="black")
        draw.text((x + 4, y + tile + 17), f"{Path(r['portrait']).name} - {note}", fill="black")
    path = out / "contact_sheet.png"
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m threestudio.gallery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompts", default=str(REPO / "gallery_text_prompts.txt"), help="text prompts, one per line")
    ap.add_argument(
        "--images",
        default=str(REPO / "gallery_image_prompts.txt"),
        help="portraits, one path per line (relative to this list's folder), in the order of --prompts",
    )
    ap.add_argument("--out", default="outputs/gallery", help="gallery folder (one sub-folder per pair)")
    ap.add_argument("--tiny", action="store_true", help="offline CPU preset of run.sh (tiny random models)")
    ap.add_argument("--specular", action="store_true", help="view-dependent highlights (run.sh --specular)")
    ap.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, e.g. tcp://head:8786")
    ap.add_argument(
        "--workers", type=int, default=0, help="local workers: GPUs to use (default all) or CPU processes (default 1)"
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N pairs of the lists")
    ap.add_argument("overrides", nargs="*", help="run.sh overrides for every avatar, e.g. s1:trainer.max_steps=1200")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.workers < 0 or args.limit < 0:
            raise UserError("--workers and --limit must be 0 (default) or more")
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            raise UserError(f"{bad[0]!r} is not an override (key=value, e.g. s1:trainer.max_steps=1200)")
        pairs = read_pairs(args.prompts, args.images, run_flags(args) + args.overrides)[: args.limit or None]
        rows = run_gallery(args, pairs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    print(write_summary(out, rows))
    print(f"summary: {out / 'summary.csv'}\ncontact sheet: {contact_sheet(out, rows)}")
    return 0 if all(r["status"] in ("done", "skipped") for r in rows) else 1


if __name__ == "__main__":  # run the imported module's main, so that Dask pickles run_pair by reference
    from threestudio.gallery import main as gallery_main

    sys.exit(gallery_main())
