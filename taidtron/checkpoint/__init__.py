"""Checkpoints on megatron-core dist_checkpointing: layout-independent (save at one tp/pp, load at another).

One concern per module:

    meta       taidtron.json: the schema (`CheckpointMeta`), format migration, the errors (no torch)
    store      directories: finding an iteration, `latest`, renames into place, leftovers (no torch)
    integrity  is a checkpoint whole and intact: manifest, dist_checkpointing index and file digests, before
               any tensor is read
    resume     which checkpoint a start resumes, and what of the config may change (the resume rules)
    dcp        save and load of model, optimizer and RNG states; non-finite and failed saves
    model_check  does a checkpoint fit the model: architecture and true vocabulary, before any weight is read
    failures   why a save failed (a full disk as megatron's writers report it) and the room a save needs
    manager    `Checkpointer`: what `taidtron.loop.fit` calls (plan, restore, due, save)


Layout of a checkpoint directory:

    CKPT_DIR/
      latest                 name of the newest complete iteration directory, written last
      iter_0000100/          one dist_checkpointing directory (torch_dist format)
        .metadata            DCP index: every tensor's global shape and where its bytes are
        __<rank>_<n>.distcp  tensor bytes (model, optimizer) and per-rank RNG states
        common.pt            optimizer param groups (non-sharded state)
        metadata.json        dist_checkpointing format marker
        taidtron.json        `CheckpointMeta`: architecture, where the weights came from, tokenizer, teacher,
                             trainer state, the file manifest (name -> size and digest) and the parallel layout it
                             was saved with

A directory made by `tools/convert.py import` is a single iteration directory with no optimizer state; anything
that takes a checkpoint path accepts either the top directory (it follows `latest`) or an iteration directory.

Completeness: an iteration directory is written under a hidden temporary name and renamed into place only when
every rank has finished and `taidtron.json` (written last, with the manifest) is in it; `latest` moves after the
rename. Loading first checks `taidtron.json` against its schema, the manifest (every file present, exact size) and
the DCP index (every byte range it names lies inside its file), then the architecture, every file's bytes against
its digest (the ranks split the reading) and the tensor keys, and only then reads tensors; any failure is a
`CheckpointError` naming the file and what to do, never a partial load.

Loading at scale: the ranks of the group passed as `group` (the data-parallel group: its ranks need the same
shards) split the reading between them and exchange what they read (megatron-core's fully parallel load), under a
generous collective timeout. Keys a Transformer Engine model has and a local-spec checkpoint lacks (TE's
`_extra_state`, its FP8 bookkeeping) are the only ones a load tolerates missing.

RNG states (Python, NumPy, torch CPU, CUDA when present, megatron's model-parallel tracker) are saved per rank as
a ShardedObject keyed by (pp, tp, dp) rank. They are restored when the checkpoint is loaded with the same layout
and skipped, with a logged note, when the layout changed (the streams are per rank and do not reshard).
"""

from taidtron.checkpoint.dcp import (
    EXTRA_STATE_SUFFIX,
    LOAD_TIMEOUT,
    RNG_KEY,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    save_model,
)
from taidtron.checkpoint.integrity import DIGEST_ALGORITHM, complete_iterations, file_digest, verify_checkpoint
from taidtron.checkpoint.manager import Checkpointer
from taidtron.checkpoint.meta import (
    FORMAT_VERSION,
    MODEL_FIELDS_REQUIRED,
    SOURCE_KINDS,
    UNKNOWN_TOKENIZER,
    CheckpointError,
    CheckpointMeta,
    Layout,
    SaveError,
    TeacherSource,
    TokenizerRef,
    WeightsSource,
    parse_meta,
)
from taidtron.checkpoint.model_check import check_architecture, check_vocabulary
from taidtron.checkpoint.resume import (
    RESUME_FREE_KEYS,
    RESUME_FROZEN_KEYS,
    ConfigChange,
    ResumePlan,
    check_teacher_unchanged,
    check_tokenizer,
    compare_configs,
    plan_resume,
)
from taidtron.checkpoint.store import (
    LATEST_FILE,
    META_FILE,
    describe_latest,
    describe_source,
    find_latest,
    iteration_name,
    read_meta,
    remove_leftovers,
    replace_dir,
    resolve_iteration_dir,
)

__all__ = [
    "DIGEST_ALGORITHM",
    "EXTRA_STATE_SUFFIX",
    "FORMAT_VERSION",
    "LATEST_FILE",
    "LOAD_TIMEOUT",
    "META_FILE",
    "MODEL_FIELDS_REQUIRED",
    "RESUME_FREE_KEYS",
    "RESUME_FROZEN_KEYS",
    "RNG_KEY",
    "SOURCE_KINDS",
    "CheckpointError",
    "CheckpointMeta",
    "Checkpointer",
    "ConfigChange",
    "Layout",
    "ResumePlan",
    "SaveError",
    "TeacherSource",
    "TokenizerRef",
    "UNKNOWN_TOKENIZER",
    "WeightsSource",
    "check_architecture",
    "check_vocabulary",
    "check_teacher_unchanged",
    "check_tokenizer",
    "compare_configs",
    "complete_iterations",
    "describe_latest",
    "describe_source",
    "file_digest",
    "find_latest",
    "iteration_name",
    "load_checkpoint",
    "load_model_weights",
    "parse_meta",
    "plan_resume",
    "read_meta",
    "remove_leftovers",
    "replace_dir",
    "resolve_iteration_dir",
    "save_checkpoint",
    "save_model",
    "verify_checkpoint",
]
