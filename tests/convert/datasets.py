"""Sizes of the tests' synthetic datasets, and readers of what the converter wrote."""
import os

IDENTITIES, PER_IDENTITY = 12, 5


def read_shards(out):
    """{key: (image bytes, label)} of every sample of a shard directory, read with tarfile."""
    import tarfile

    from convert.manifest import Manifest

    m = Manifest.load(out)
    samples = {}
    for path in m.shard_paths(out):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {int(k): (v[m.extension], int(v["cls"])) for k, v in samples.items()}


def tree_bytes(out):
    """{file name: bytes} of every file in a directory (for byte-identical comparisons), less the output lock,
    which names the job that last held the folder."""
    from common.files import LOCK_NAME

    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out)) if name != LOCK_NAME}
