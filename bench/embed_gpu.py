"""End-to-end embedding from COGs with a MarScope-sized model: raw forward vs the whole path.

Run on a GPU machine (the figure in the README):

    .venv/bin/python bench/embed_gpu.py --model ViT-L-14-quickgelu --tile-px 512

Check on a CPU (minutes):

    .venv/bin/python bench/embed_gpu.py --model marscope-tiny --tile-px 64 --cells 600 \\
        --device cpu --processes 2 --batch 64

Random weights stand in for the MarScope weights (same architecture, written once to
``bench/out/models`` in the open_clip layout and loaded with ``local-dir:`` as a user's
model is). Two figures in one run:

- raw forward: ``encode_image`` on random input already on the device, in the model's
  precision (bf16 on a GPU), batch ``--batch``: the model's ceiling;
- end to end: :func:`marscope_stac.embed.run.embed_catalog` exactly as ``marscope embed
  --read-processes N`` runs it on the demo world's COGs: tiles read and rendered in N worker
  processes (shared-memory hand-over), embedded in this process, shards written.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.embed import CellSelection, ComputeOptions
from marscope_stac.embed.run import embed_catalog
from marscope_stac.grid.grids import parse_grid
from marscope_stac.models.clip import register_bundled_architectures
from marscope_stac.models.loading import load_model, quiet_model_loading
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import plan_tiles

OUT = Path("bench/out")


def random_model(arch: str, tile_px: int) -> str:
    """An open_clip model of ``arch`` at ``tile_px`` with random weights, as ``local-dir:``."""
    import open_clip
    from safetensors.torch import save_file

    register_bundled_architectures()
    folder = OUT / "models" / f"{arch}-{tile_px}px-random"
    if not (folder / "open_clip_model.safetensors").is_file():
        cfg = copy.deepcopy(open_clip.get_model_config(arch))
        cfg["vision_cfg"]["image_size"] = tile_px
        torch.manual_seed(0)
        with quiet_model_loading():
            net = open_clip.create_model(arch, force_image_size=tile_px)
        stage = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(stage / "open_clip_model.safetensors"))
        config = {
            "model_name": arch,
            "model_cfg": cfg,
            "preprocess_cfg": {"mean": [0.45] * 3, "std": [0.2] * 3},
        }
        (stage / "open_clip_config.json").write_text(json.dumps(config))
        shutil.rmtree(folder, ignore_errors=True)
        stage.rename(folder)
    return f"local-dir:{folder}"


def raw_forward(model: str, tile_px: int, batch: int, device: str, seconds: float) -> float:
    """Tiles/s of the image tower alone on random input already on the device."""
    cm = load_model(model, device=device)
    x = torch.rand(batch, 3, tile_px, tile_px, device=cm.device).to(cm.dtype)
    sync = torch.cuda.synchronize if cm.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            cm.model.encode_image(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            cm.model.encode_image(x)
            n += batch
        sync()
    return n / (time.perf_counter() - t0)


def grid_step(grid: object) -> float:
    """A lon/lat grid's cell size in degrees (0.05 for other grids)."""
    return float(getattr(grid, "size", 0.05))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-L-14-quickgelu", help="open_clip architecture.")
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128, help="Tiles per forward pass and task.")
    ap.add_argument("--cells", type=int, default=12000, help="Cells embedded end to end.")
    ap.add_argument("--grid", default="lonlat:0.01")
    ap.add_argument("--size", default="large", help="Demo world size.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--processes", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--raw-seconds", type=float, default=20.0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = OUT / f"demo-{args.size}"
    ensure_demo_catalog(root, size=args.size)
    model = random_model(args.model, args.tile_px)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(
        f"{args.model} at {args.tile_px} px, batch {args.batch}, {gpu}, "
        f"{os.cpu_count()} CPUs, {args.processes} reading processes"
    )
    raw = raw_forward(model, args.tile_px, args.batch, args.device, args.raw_seconds)
    print(f"raw forward: {raw:8.1f} tiles/s")
    sources = load_sources(root)
    grid = parse_grid(args.grid, sources.body)
    first = plan_tiles(sources, grid, args.tile_px).cells[: args.cells]
    b = grid.bounds(first)  # the southern rows holding --cells cells
    bbox = [b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]
    options = {
        "model": model,
        "grid": args.grid,
        "tile_px": args.tile_px,
        "compute": ComputeOptions(
            batch_size=args.batch, read_processes=args.processes, device=args.device
        ),
        "publish": False,
        "progress": False,
    }
    warm = OUT / "gpu-warm"
    shutil.rmtree(warm, ignore_errors=True)  # start the pool and the model once
    small = [bbox[0], bbox[1], bbox[0] + 4 * grid_step(grid), bbox[1] + grid_step(grid)]
    embed_catalog(root, warm, select=CellSelection(bbox=small), **options)
    out = OUT / "gpu-products"
    shutil.rmtree(out, ignore_errors=True)
    res = embed_catalog(root, out, select=CellSelection(bbox=bbox), **options)
    e2e = res.embedded_now / res.seconds
    print(
        f"end to end: {e2e:8.1f} tiles/s ({res.embedded_now} cells in {res.seconds:.1f} s, "
        f"{e2e / raw:.2f} of raw forward)"
    )


if __name__ == "__main__":
    main()
