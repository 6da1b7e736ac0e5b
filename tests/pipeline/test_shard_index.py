"""ShardIndex.open's offset table: one uint32 table filled shard by shard, widened to int64 (values kept) as soon
as a shard holds an offset past 4 GiB, as a tar over 4 GiB does."""
import numpy as np

from pipeline import shard_index
from pipeline.shard_index import ShardIndex


def test_offset_table_is_uint32_and_widens_to_int64_past_4_gib(jpeg_shards, monkeypatch):
    small = ShardIndex.open(jpeg_shards)
    assert small.table.dtype == np.uint32 and len(small.paths) >= 3
    assert np.array_equal(small.shard_of, np.repeat(np.arange(len(small.paths)), 50)[:small.num_samples])
    parse = shard_index._parse_idx

    def far_cls_members_in_the_second_shard(path, first_key, count):
        ext, part = parse(path, first_key, count)
        if first_key == 50:  # shard 1: its .cls members 4 GiB further on (the image members stay in the tar)
            part = part.copy()
            part[:, 2] += 2**32
        return ext, part

    monkeypatch.setattr(shard_index, "_parse_idx", far_cls_members_in_the_second_shard)
    wide = ShardIndex.open(jpeg_shards)
    expected = small.table.astype(np.int64)
    expected[50:100, 2] += 2**32
    assert wide.table.dtype == np.int64 and np.array_equal(wide.table, expected)
    assert np.array_equal(wide.shard_of, small.shard_of)
