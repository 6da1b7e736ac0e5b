"""Turn a face dataset (.rec or identity folders) into verified, shuffled WebDataset shards, once.

Public API (DESIGN.md, "concrete seams"): convert_rec, convert_folder, verify, ConvertOptions,
convert.manifest.Manifest, convert.recordio, convert.synth.

Names are imported on first use: webdataset (hence torch) loads only where shards are written,
not in the worker processes that decode images or render synthetic faces.
"""
import importlib

_EXPORTS = {
    "ConvertOptions": "convert.converter",
    "OutputError": "convert.converter",
    "convert_folder": "convert.converter",
    "convert_rec": "convert.converter",
    "Manifest": "convert.manifest",
    "ManifestError": "convert.manifest",
    "ShardRecord": "convert.manifest",
    "verify": "convert.verify_shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'convert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
