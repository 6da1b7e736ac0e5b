"""Turn a face dataset (.rec or identity folders) into verified, shuffled WebDataset shards, once.

Public API (DESIGN.md, "concrete seams"): convert_rec, convert_folder, verify, ConvertOptions, Manifest,
convert.recordio, convert.synthetic.

Modules, in the order the data flows:
- sources.py: read a source, an insightface/im2rec .rec or one folder of images per identity.
- recordio.py: read and write MXNet RecordIO (.rec/.idx) without mxnet.
- rec_layout.py: which records of a .rec are images, by insightface's header record (checked against them) or all.
- image_check.py: decode an image to validate it, and turn it into a shard member (JPEG bytes or raw pixels).
- validation.py: the first pass, every image decoded once in parallel, labels and sizes collected.
- class_exclusion.py: `--exclude-classes FILE`, the source classes to leave out, read and checked against the source.
- key_exclusion.py: `--exclude-keys FILE`, the source images to leave out, read and checked against the source.
- class_merge.py: `--merge-classes FILE`, source classes relabelled as others (`FROM -> TO`), read and checked.
- shard_jobs.py: the second pass, the planned shards written in parallel, one process per shard.
- shard_writer.py: write one tar shard and its DALI index.
- worker_pool.py: when worker processes pay off, and the spawned pool they run in.
- manifest.py: the shard set's manifest.json, typed and validated.
- output_folder.py: what an output folder already holds: an earlier run to resume, or another dataset to refuse.
- converter.py: a conversion from start to end: both passes, the shuffle, resuming, the manifest.
- verify_shards.py: re-read a shard directory and list where it disagrees with its manifest.
- source_keys.py: each shard sample's source image (.rec key or folder path), from the manifest and the source.
- cli.py: the command line, `python -m convert rec|folder|verify|synth|synth-bin`.
- synthetic/: synthetic face identities, a data source written as a .rec, folders or a .bin pair set.
"""
from convert.converter import ConvertOptions, convert_folder, convert_rec
from convert.manifest import Manifest, ManifestError, ShardRecord
from convert.output_folder import OutputError
from convert.verify_shards import verify

__all__ = ["ConvertOptions", "Manifest", "ManifestError", "OutputError", "ShardRecord", "convert_folder",
           "convert_rec", "verify"]
