"""The teacher cache: the frozen teacher's log-probs computed once, stored, and distilled from by any number of runs
(`teacher.cache=DIR`) with no teacher model in memory. Guide and format: docs/teacher_cache.md.

    format     the on-disk layout: manifest, shards (safetensors), shard records, id packing, digests
    identity   the fingerprints a run and a cache are compared by; the refusals (`check_fits_run`)
    writer     `write_cache`: the teacher, forward only, over the run's samples; top-K across TP; resumable
    reader     `open_run_cache` (every check before training), `TeacherCache.attach_run` (records read ahead)

Entry point: `python -m taidtron.cache_teacher` (taidtron/cache_teacher.py). The losses' side, top-K across TP
shards and the teacher-logit shard rebuilt from records, is `taidtron.losses.cached_teacher`.
"""

from taidtron.cache.format import FORMAT_VERSION, CacheError, CacheManifest, ShardRecord, read_manifest
from taidtron.cache.reader import TeacherCache, open_run_cache, open_teacher_cache
from taidtron.cache.writer import CacheOptions, write_cache

__all__ = [
    "FORMAT_VERSION",
    "CacheError",
    "CacheManifest",
    "CacheOptions",
    "ShardRecord",
    "TeacherCache",
    "open_run_cache",
    "open_teacher_cache",
    "read_manifest",
    "write_cache",
]
