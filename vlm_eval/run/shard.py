"""Which shard of a run this process is: `--shard i/n`, or torchrun's and accelerate's environment.

Shards are independent processes that evaluate parts of one subset into one run folder (run.folder);
they never talk to each other, so a crashed shard stalls nobody and any scheduler can start them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vlm_eval.errors import VlmEvalError


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    local_rank: int | None = None  # the GPU of this node to use (torchrun / accelerate launch)

    @property
    def tag(self) -> str:
        """Names this shard's files in the run folder."""
        return f"{self.index}-of-{self.count}"

    def device(self, device: str) -> str:
        """`device` with a launcher's process placed on its own GPU (cuda -> cuda:LOCAL_RANK)."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.local_rank is not None else device


def shard_from(spec: str | None, environ: dict[str, str] | None = None) -> Shard:
    """The shard `--shard i/n` names, else the one torchrun or accelerate launch started (RANK, WORLD_SIZE,
    LOCAL_RANK), else the whole run."""
    env = os.environ if environ is None else environ
    local_rank = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").isdigit() else None
    if spec is not None:
        index, sep, count = spec.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise VlmEvalError(f"--shard expects i/n with 0 <= i < n (e.g. --shard 0/4), got {spec!r}")
        return Shard(int(index), int(count), local_rank)
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return Shard(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), local_rank)
    return Shard(local_rank=local_rank)
