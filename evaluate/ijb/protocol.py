"""IJB-B / IJB-C protocols on disk: insightface's text layout and CVLFace's arrow folder.

insightface (`<root>/IJBC/`): `meta/ijbc_face_tid_mid.txt` (image template media),
`meta/ijbc_template_pair_label.txt` (t1 t2 label), `meta/ijbc_name_5pts_score.txt` (image, ten
landmark coordinates, faceness), `loose_crop/<image>`; for 1:N `meta/ijbc_1N_gallery_G1.csv`,
`..._G2.csv` and `meta/ijbc_1N_probe_mixed.csv` (IJB-B names its galleries S1 and S2).
CVLFace (`<root>/IJBC_gt_aligned/`): arrow files (image, index) of aligned faces and `metadata.pt`
with faceness_scores, templates, medias, label, p1, p2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from common.safe_pickle import DataFileError
from evaluate.readers import load_metadata, meta_array, read_image_folder

TARGETS = ("IJBB", "IJBC")


@dataclass(frozen=True)
class Gallery:
    name: str  # G1 / G2 (S1 / S2 on IJB-B)
    templates: np.ndarray  # unique template ids
    subjects: np.ndarray  # subject id of each


@dataclass(frozen=True)
class IJBProtocol:
    name: str
    templates: np.ndarray  # [N] per image
    medias: np.ndarray  # [N]
    faceness: np.ndarray  # [N] float32
    p1: np.ndarray  # [P]
    p2: np.ndarray
    labels: np.ndarray  # [P] 0/1
    images: Optional[tuple] = None  # CVLFace: encoded aligned faces, one per image row
    crop_root: Optional[Path] = None  # insightface: loose crops, aligned from landmarks
    crop_names: tuple = ()
    landmarks: Optional[np.ndarray] = None  # [N, 5, 2]
    galleries: tuple = ()  # of Gallery, for 1:N
    probes: Optional[Gallery] = None
    notes: tuple = field(default=())
    source: str = ""  # the folder it was read from, for messages

    def __post_init__(self):
        n = self.templates.shape[0]
        for key in ("medias", "faceness"):
            if getattr(self, key).shape != (n,):
                raise ValueError(f"{self.name}: {key} has shape {getattr(self, key).shape}, expected ({n},)")
        if not (self.p1.shape == self.p2.shape == self.labels.shape):
            raise ValueError(f"{self.name}: p1, p2 and labels differ in length")
        if (self.images is None) == (self.crop_root is None):
            raise ValueError(f"{self.name}: exactly one image source (aligned images or loose crops) is needed")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"{self.name}: {len(self.images)} images for {n} rows of templates")
        if self.crop_root is not None and (len(self.crop_names) != n or self.landmarks.shape != (n, 5, 2)):
            raise ValueError(f"{self.name}: loose crops need {n} names and [N,5,2] landmarks")

    @property
    def num_images(self) -> int:
        return int(self.templates.shape[0])


def find(root: str | Path, target: str) -> Optional[Path]:
    """The folder holding `target` under root, CVLFace's layout first; None when neither exists."""
    root = Path(root)
    for candidate in (root / f"{target}_gt_aligned", root / target):
        if (candidate / "metadata.pt").is_file() or (candidate / "meta").is_dir():
            return candidate
    return None


def load(folder: str | Path, target: str) -> IJBProtocol:
    folder = Path(folder)
    if target not in TARGETS:
        raise ValueError(f"unknown IJB target {target!r}; known: {TARGETS}")
    try:
        if (folder / "metadata.pt").is_file():
            return load_cvlface(folder, target)
        return load_insightface(folder, target)
    except DataFileError:
        raise
    except ValueError as err:  # IJBProtocol's checks: files that disagree on the number of images or pairs
        raise DataFileError(f"{folder}: {err}") from None


def load_cvlface(folder: Path, target: str) -> IJBProtocol:
    meta_path = folder / "metadata.pt"
    meta = load_metadata(meta_path)
    _, _, images = read_image_folder(folder)
    get = lambda k, dt=None: meta_array(meta, k, source=meta_path, dtype=dt)  # noqa: E731
    return IJBProtocol(name=target, templates=get("templates", np.int64), medias=get("medias", np.int64),
                       faceness=get("faceness_scores", np.float32), p1=get("p1", np.int64),
                       p2=get("p2", np.int64), labels=get("label", np.int64), images=images,
                       notes=("CVLFace layout: no 1:N gallery files",), source=str(folder))


def _read_columns(path: Path, delimiter: str, header: bool) -> list:
    if not path.is_file():
        raise DataFileError(f"{path}: IJB protocol file not found")
    opts = pcsv.ReadOptions(autogenerate_column_names=not header, skip_rows=0)
    try:
        table = pcsv.read_csv(path, read_options=opts, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    except (OSError, pa.ArrowException) as err:
        raise DataFileError(f"{path}: cannot parse: {err}") from None
    return [table.column(i) for i in range(table.num_columns)]


def _gallery(path: Path, name: str) -> Gallery:
    cols = _read_columns(path, ",", header=True)
    templates = cols[0].to_numpy().astype(np.int64)
    subjects = cols[1].to_numpy().astype(np.int64)
    unique, first = np.unique(templates, return_index=True)  # one row per image; a template has one subject
    return Gallery(name=name, templates=unique, subjects=subjects[first])


def load_insightface(folder: Path, target: str) -> IJBProtocol:
    meta = folder / "meta"
    t = target.lower()
    name_col, tid, mid = _read_columns(meta / f"{t}_face_tid_mid.txt", " ", header=False)[:3]
    pair_cols = _read_columns(meta / f"{t}_template_pair_label.txt", " ", header=False)
    lmk_cols = _read_columns(meta / f"{t}_name_5pts_score.txt", " ", header=False)
    if len(lmk_cols) < 12:
        raise DataFileError(f"{meta / f'{t}_name_5pts_score.txt'}: expected name, 10 coordinates and a score "
                            f"per line, found {len(lmk_cols)} columns")
    names = [str(x) for x in name_col.to_pylist()]
    lmk_names = [str(x) for x in lmk_cols[0].to_pylist()]
    if names != lmk_names:
        i = next((i for i, (a, b) in enumerate(zip(names, lmk_names)) if a != b), min(len(names), len(lmk_names)))
        raise DataFileError(f"{meta}: {t}_face_tid_mid.txt and {t}_name_5pts_score.txt disagree at line {i + 1} "
                            f"({names[i] if i < len(names) else 'end'} vs {lmk_names[i] if i < len(lmk_names) else 'end'})")
    landmarks = np.stack([c.to_numpy().astype(np.float32) for c in lmk_cols[1:11]], 1).reshape(-1, 5, 2)  # float32 as insightface
    galleries, probes, notes = [], None, []
    g_names = ("G1", "G2") if target == "IJBC" else ("S1", "S2")
    g_paths = [meta / f"{t}_1N_gallery_{g}.csv" for g in g_names]
    probe_path = meta / f"{t}_1N_probe_mixed.csv"
    if all(p.is_file() for p in g_paths) and probe_path.is_file():
        galleries = [_gallery(p, g) for p, g in zip(g_paths, g_names)]
        probes = _gallery(probe_path, "probe_mixed")
    else:
        notes.append(f"1:N skipped: {', '.join(str(p.name) for p in g_paths + [probe_path] if not p.is_file())} missing")
    return IJBProtocol(name=target, templates=tid.to_numpy().astype(np.int64), medias=mid.to_numpy().astype(np.int64),
                       faceness=lmk_cols[11].to_numpy().astype(np.float32),
                       p1=pair_cols[0].to_numpy().astype(np.int64), p2=pair_cols[1].to_numpy().astype(np.int64),
                       labels=pair_cols[2].to_numpy().astype(np.int64), crop_root=folder / "loose_crop",
                       crop_names=tuple(names), landmarks=landmarks, galleries=tuple(galleries), probes=probes,
                       notes=tuple(notes), source=str(folder))
