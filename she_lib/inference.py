"""Batched inference: generation and first-token grade scoring.

:func:`generate` sorts prompts by length so each batch pads little, left-pads, decodes with the KV
cache under ``torch.inference_mode`` and returns completions in the input order. With
``num_return_sequences = n > 1`` each prompt is prefilled once and its KV cache repeated n times
(``share_prefix``); HF ``generate`` alone would prefill n copies, and prefill is most of the cost of
sampling ~100-token rationales after ~210-token prompts on a CPU.

:func:`grade_probabilities` is TaoSR1's serving read-out: one forward pass over ``prompt + prefix``
(``prefix`` = ``"<grade>"``), logits at the last position only, softmax restricted to the first token
of each grade word: P(c | x) = exp(z_c) / sum_j exp(z_j) over the scale's grades. The grade words must
start with distinct tokens (checked; SmolLM2: Ex / Subst / Com / Ir).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


def _batches(prompts, tokenizer, batch_size):
    lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    order = np.argsort(lengths, kind="stable")[::-1]  # longest first: a memory error shows up at once
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


def _encode(tokenizer, texts, device):
    tokenizer.padding_side = "left"
    return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every row's positions start at 0


def _shared_prefill(model, enc, n: int) -> dict:
    """Inputs for ``generate`` with each prompt's cache computed once and repeated ``n`` times: the cache
    holds all prompt tokens but the last, which ``generate`` feeds as its first step."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=_positions(mask)[:, :-1],
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    return dict(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                past_key_values=cache)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 128,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_return_sequences: int = 1, progress: bool = True, desc: str = "generate",
             share_prefix: bool = True):
    """Completions for ``prompts`` (a list of str, or of lists when num_return_sequences > 1).
    ``batch_size`` counts prompts; a batch decodes ``batch_size * num_return_sequences`` sequences."""
    model.eval()
    out: list = [None] * len(prompts)
    n, shared = num_return_sequences, share_prefix and num_return_sequences > 1
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=1 if shared else n,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress)
    for idx in _batches(prompts, tokenizer, batch_size):
        enc = _encode(tokenizer, [prompts[i] for i in idx], model.device)
        if shared and enc["input_ids"].shape[1] > 1:  # a one-token prompt has nothing to share
            ids = model.generate(**_shared_prefill(model, enc, n), **kwargs)
        else:
            ids = model.generate(**enc, **{**kwargs, "num_return_sequences": n})
        ids = ids[:, enc["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        for k, i in enumerate(idx):
            chunk = texts[k * n:(k + 1) * n]
            out[i] = chunk if n > 1 else chunk[0]
        bar.update(len(idx))
    bar.close()
    return out


def grade_token_ids(tokenizer, words) -> list[int]:
    """First token id of each grade word as it follows the ``<grade>`` tag; must be distinct."""
    ids = []
    for w in words:
        full = tokenizer("<grade>" + w, add_special_tokens=False).input_ids
        prefix = tokenizer("<grade>", add_special_tokens=False).input_ids
        if full[: len(prefix)] != prefix:
            raise ValueError(f"tokenizer merges '<grade>' with {w!r}; first-token scoring is undefined")
        ids.append(full[len(prefix)])
    if len(set(ids)) != len(ids):
        raise ValueError(f"grade words {list(words)} share a first token ({ids}); use distinct words")
    return ids


@torch.inference_mode()
def grade_probabilities(model, tokenizer, prompts: list[str], words, prefix: str = "<grade>",
                        batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """[n, len(words)] probabilities of each grade at the answer position (no decoding)."""
    model.eval()
    ids = torch.tensor(grade_token_ids(tokenizer, words))
    texts = [p + prefix for p in prompts]
    out = np.zeros((len(texts), len(ids)), dtype=np.float64)
    bar = tqdm(total=len(texts), desc="first-token", disable=not progress)
    for idx in _batches(texts, tokenizer, batch_size):
        enc = _encode(tokenizer, [texts[i] for i in idx], model.device)
        logits = model(**enc, position_ids=_positions(enc["attention_mask"]), logits_to_keep=1).logits[:, -1, :].float()
        out[idx] = torch.softmax(logits[:, ids.to(logits.device)], dim=-1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out
