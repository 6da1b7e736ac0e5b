"""Fetch a CVLFace teacher repository from the Hugging Face hub into its cache (weights and description only)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .weights import CheckpointError

# Only what the loader reads. CVLFace repositories also ship wrapper.py, models/*.py and
# pretrained_model/model.pt (the same weights again); none of it is fetched, and no code is run.
ALLOW_PATTERNS = ("config.json", "model.safetensors", "pretrained_model/model.yaml")


def download_hint(repo_id: str, revision: Optional[str]) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"hint: for a gated or private repository set HF_TOKEN; to work offline, download once with "
            f"`hf download {repo_id}{rev} {' '.join(ALLOW_PATTERNS)}` (huggingface-cli download in older "
            f"huggingface_hub) and set HF_HUB_OFFLINE=1; the cache lives under HF_HOME (or HF_HUB_CACHE)")


def snapshot(spec: str, repo_id: str, revision: Optional[str]) -> Path:
    """The local folder holding `repo_id` at `revision` (default: main), downloading what is missing.

    huggingface_hub reads HF_TOKEN, HF_HOME / HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE itself; in
    offline mode it answers from the cache (refs/<revision> -> snapshots/<commit>) or fails.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(ALLOW_PATTERNS))
    except Exception as error:  # any failure of the hub client: re-raised as the one loader error
        raise CheckpointError(
            f"{spec!r}: could not fetch {repo_id}@{revision or 'main'} from the Hugging Face hub "
            f"({type(error).__name__}: {error}); {download_hint(repo_id, revision)}") from error
    return Path(folder)
