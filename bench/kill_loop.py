"""kill -9 loop: ``embed``, ``query``, ``catalog publish``, ``train``, ``real-data`` killed.

Run:  .venv/bin/python bench/kill_loop.py [--kills 10] [--seed 0] [--keep]
      [--only embed,query,publish,train,real-data]

On the small demo world with the bundled model, in a temporary folder: a clean run of each
command; then the same command started again and again in a fresh output, each time killed
with SIGKILL after a random delay in (0.2 s, the clean run's time), ``--kills`` times, and
finally run to completion. Printed: how many runs were killed mid-way, whether ``marscope
validate`` (schemas, links, assets, sizes, checksums) passes, the temporary files left
behind (none expected), and whether the results are identical to the clean run's
(embedding set: cells, float16 and int8 vectors, FAISS index; queries: COG, PMTiles and
preview bytes, GeoParquet tables; publish: every STAC file of a 2,000-item catalog; train:
the weights and every epoch's figures; real-data: its COGs and label tables, and its
package cache left with no partial download, the packages being fetched from the registries
by every killed run). Exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def marscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "marscope_stac.cli", *args]


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:])} failed: {done.stderr[-1500:]}")
    return time.perf_counter() - t0


STARTUP_S: list[float] = []


def startup_s() -> float:
    """Seconds the command line takes to start (Python and imports), measured once."""
    if not STARTUP_S:
        STARTUP_S.append(run(marscope("--version")))
    return STARTUP_S[0]


def kill_loop(args: list[str], clean_s: float, kills: int, rng: random.Random) -> int:
    """Start and SIGKILL ``args`` ``kills`` times, then run it to the end; runs killed.

    Each kill comes after a random delay between the command line's start-up time and the
    clean run's time, so that it lands while the command works.
    """
    killed = 0
    low = min(startup_s(), 0.8 * clean_s)
    for _ in range(kills):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(low, clean_s))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
    run(args)
    return killed


def leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob(".*") if not p.name.endswith(".lock")
    )


def same_files(a: Path, b: Path) -> list[str]:
    """Files of tree ``a`` whose content differs in ``b`` (tables compared as tables)."""
    differ = []
    for fa in sorted(p for p in a.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = fa.relative_to(a)
        fb = b / rel
        if fa.suffix in (".json",) or "text-vectors" in rel.parts or "shards" in rel.parts:
            continue  # STAC items and manifests hold times; shards are per-run work files
        if not fb.is_file():
            differ.append(f"{rel} missing")
        elif fa.suffix == ".parquet":
            if not pq.read_table(fa).equals(pq.read_table(fb)):
                differ.append(str(rel))
        elif fa.read_bytes() != fb.read_bytes():
            differ.append(str(rel))
    return differ


def validate(folder: Path) -> str:
    done = subprocess.run(marscope("validate", str(folder)), capture_output=True, text=True)
    return "valid" if done.returncode == 0 else f"INVALID: {done.stdout[-800:]}"


def check(
    name: str,
    command: list[str],
    part: str,
    clean_s: float,
    tmp: Path,
    kills: int,
    rng: random.Random,
) -> bool:
    """Kill ``command`` into ``tmp/killed`` and compare with ``tmp/clean``; whether it failed."""
    killed = kill_loop(marscope(*command, "--out", str(tmp / "killed")), clean_s, kills, rng)
    left = leftovers(tmp / "killed")
    differ = same_files(tmp / "clean" / part, tmp / "killed" / part)
    verdict = validate(tmp / "killed")
    print(
        f"{name}: clean run {clean_s:.1f} s; {killed} of {kills} runs killed mid-way; "
        f"then finished: {verdict}, {len(left)} temporary files left, "
        f"{'identical to the clean run' if not differ else f'DIFFERENT: {differ}'}"
    )
    return bool(left or differ or verdict != "valid")


def big_catalog(root: Path, n: int = 2000) -> Path:
    """A static catalog of ``n`` small items in one collection (no assets), for publish."""
    from marscope_stac.stac.build import stac_catalog, stac_collection, stac_item
    from marscope_stac.stac.catalog import write_static_catalog

    items = [
        stac_item(
            f"item-{k:05d}",
            {"datetime": "2020-01-01T00:00:00Z", "ssys:targets": ["Mars"]},
            [],
            [k % 360 - 180.0, -1.0, k % 360 - 179.5, 1.0],
        )
        for k in range(n)
    ]
    coll = stac_collection(
        "tiles", "Tiles", "A large collection.", ([-180.0, -1.0, 180.0, 1.0], [None, None]), {}
    )
    catalog = stac_catalog("big", "Big", f"{n} items to publish.")
    write_static_catalog(root, catalog, [(coll, items)])
    return root


def check_publish(tmp: Path, kills: int, rng: random.Random) -> bool:
    """``catalog publish`` of a 2,000-item catalog killed mid-way, then run to the end."""
    url = ["--base-url", "https://example.org/big/"]
    clean, killed = big_catalog(tmp / "publish-clean"), big_catalog(tmp / "publish-killed")
    clean_s = run(marscope("catalog", "publish", str(clean), *url))
    n_killed = kill_loop(marscope("catalog", "publish", str(killed), *url), clean_s, kills, rng)
    left = leftovers(killed)
    files = sorted(p.relative_to(clean) for p in clean.rglob("*.json"))
    differ = [str(f) for f in files if (clean / f).read_bytes() != (killed / f).read_bytes()]
    print(
        f"catalog publish ({len(files)} STAC files): clean run {clean_s:.1f} s; {n_killed} of "
        f"{kills} runs killed mid-way; then finished: {validate(killed)}, {len(left)} "
        f"temporary files left, "
        f"{'identical to the clean run' if not differ else f'DIFFERENT: {differ[:5]}'}"
    )
    return bool(left or differ)


def check_train(cat: Path, tmp: Path, kills: int, rng: random.Random) -> bool:
    """``train`` (4 epochs of the tiny architecture) killed mid-way, then run to the end."""
    command = ["train", str(cat), "--model", "marscope-tiny", "--epochs", "4"]
    command += ["--steps-per-epoch", "4", "--batch-size", "16", "--crop-px", "32"]
    clean_s = run(marscope(*command, "--out", str(tmp / "train-clean")))
    killed = kill_loop(marscope(*command, "--out", str(tmp / "train-killed")), clean_s, kills, rng)
    left = leftovers(tmp / "train-killed")
    differ = [
        name
        for name in ("model/open_clip_model.safetensors", "metrics.json")
        if (tmp / "train-clean" / name).read_bytes() != (tmp / "train-killed" / name).read_bytes()
    ]
    same = "weights and figures identical to the clean run"
    print(
        f"train: clean run {clean_s:.1f} s; {killed} of {kills} runs killed mid-way; then "
        f"finished: {len(left)} temporary files left, {differ or same}"
    )
    return bool(left or differ)


def check_real_data(tmp: Path, kills: int, rng: random.Random) -> bool:
    """``real-data`` killed while it fetches packages and writes, then run to the end."""
    clean = ["real-data", "--cache", str(tmp / "rd-cache-clean"), "--out", str(tmp / "rd-clean")]
    clean_s = run(marscope(*clean))
    command = ["real-data", "--cache", str(tmp / "rd-cache"), "--out", str(tmp / "rd-killed")]
    command.append("--overwrite")  # a run that finished before its kill: the next replaces it
    killed = kill_loop(marscope(*command), clean_s, kills, rng)
    left = leftovers(tmp / "rd-cache") + leftovers(tmp / "rd-killed")
    left += [str(p) for p in (tmp / "rd-cache").rglob("downloads/*")]
    differ = same_files(tmp / "rd-clean", tmp / "rd-killed")
    print(
        f"real-data: clean run {clean_s:.1f} s (packages fetched); {killed} of {kills} runs "
        f"killed mid-way; then finished: {validate(tmp / 'rd-killed')}, {len(left)} temporary "
        f"files left in its cache and catalog, "
        f"{'identical to the clean run' if not differ else f'DIFFERENT: {differ[:5]}'}"
    )
    return bool(left or differ)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", default="embed,query,publish,train,real-data")
    args = ap.parse_args()
    from marscope_stac.datasets.demo import build_demo_catalog

    only = set(args.only.split(","))
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="marscope-kill-"))
    failed = False
    try:
        cat = build_demo_catalog(tmp / "catalogs" / "demo", size="small").root
        if only & {"embed", "query"}:
            embed = ["embed", str(cat), "--batch-size", "8"]
            clean_s = run(marscope(*embed, "--out", str(tmp / "clean")))
            if "embed" in only:
                failed |= check("embed", embed, "embeddings", clean_s, tmp, args.kills, rng)
        if "query" in only:
            query = ["query", "impact craters", "alluvial fans", "dune fields"]
            run(marscope(*query, "--out", str(tmp / "clean")))
            clean_q = run(marscope(*query, "--out", str(tmp / "clean")))  # texts cached now
            failed |= check("query", query, "queries", clean_q, tmp, args.kills, rng)
        if "publish" in only:
            failed |= check_publish(tmp, args.kills, rng)
        if "train" in only:
            failed |= check_train(cat, tmp, args.kills, rng)
        if "real-data" in only:
            failed |= check_real_data(tmp, args.kills, rng)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
