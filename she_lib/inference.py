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

Both share the batch's common prefix (``share_common_prefix``, the default): every prompt opens with the
same chat-template system part (90 of ~210 tokens with SmolLM2's tokenizer), so the longest token prefix all
prompts of a batch agree on is run once at batch size 1, its KV cache repeated to the batch, and only the
suffixes are run. The cut is made on token ids, never on text, so it always falls on a boundary all rows
share. The suffixes are left-padded *after* the prefix, ``[prefix | pads | suffix]``, with the pads masked
out and position ids counted over real tokens only, so every real token sees the same keys at the same
positions as in the plain left-padded batch ``[pads | prefix | suffix]``: the same probabilities up to float
rounding and the same greedy tokens (tests/test_modeling_inference.py). Batches whose common prefix is shorter
than ``MIN_COMMON_PREFIX`` tokens, of one prompt, or for a model whose forward Unsloth replaced (not checked
with pads after a cached prefix) take the plain path.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from .grade_head import GradeHeadProcessor, base_of, grade_head_of


@contextmanager
def decode_attention(model, implementation: str | None):
    """Run the block with the model's attention implementation set to ``implementation`` ("eager", "sdpa"; None
    leaves it), restored afterwards. Why: torch's CPU SDPA kernel is slow for the one-query-token steps of decoding in
    bf16; benchmarks/bench_decode.py measures eager against it."""
    before = model.config._attn_implementation
    if implementation is None or implementation == before:
        yield model
        return
    model.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


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


def repeated_prefix_cache(model, batch: int, **prefix):
    """The KV cache of one shared prefix (``prefix``: the model's inputs at batch size 1, e.g. ``input_ids`` or
    ``inputs_embeds``), repeated to ``batch`` rows; gradients flow through it when the caller trains (sft, grade_tune)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model(**prefix, past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)
    return cache


MIN_COMMON_PREFIX = 16  # tokens; below this a separate batch-1 forward is not worth its overhead


def common_prefix_length(rows: list[list[int]]) -> int:
    """Tokens all ``rows`` share at the start, leaving every row at least one token of its own."""
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows) - 1
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _supports_common_prefix(model) -> bool:
    """False for a model whose forward Unsloth replaced: its fast paths are not checked against a cache with pads
    after the prefix, so such a model takes the plain path."""
    base = base_of(model)
    return not any(str(getattr(type(m).forward, "__module__", "")).startswith("unsloth")
                   for m in (model, base, getattr(base, "model", None)) if m is not None)


def _encode_shared(model, tokenizer, texts, device):
    """``(enc, cache)`` with the rows' common token prefix run once and its cache repeated to the batch, or
    None when the prefix is too short. ``enc`` holds ``[prefix | left pads | suffix]`` ids and their mask; the
    cache covers the prefix, ready for the suffix forward or ``generate``."""
    if len(texts) < 2 or not _supports_common_prefix(model):
        return None
    rows = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    p = common_prefix_length(rows)
    if p < MIN_COMMON_PREFIX:
        return None
    width = max(len(r) for r in rows) - p  # the longest suffix; shorter ones are left-padded after the prefix
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([r[:p] + [pad] * (width - len(r) + p) + r[p:] for r in rows], device=device)
    mask = torch.tensor([[1] * p + [0] * (width - len(r) + p) + [1] * (len(r) - p) for r in rows], device=device)
    # the prefix has no pads: positions 0..p-1, as in every row of the plain batch
    cache = model(input_ids=ids[:1, :p], attention_mask=mask[:1, :p], use_cache=True,
                  logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(len(rows))
    return {"input_ids": ids, "attention_mask": mask}, cache


def _extend(model, enc, cache, upto: int, **kw):
    """Run ``enc``'s tokens from the cache's length up to column ``upto`` through ``model``; its output."""
    ids, mask, start = enc["input_ids"], enc["attention_mask"], cache.get_seq_length()
    return model(input_ids=ids[:, start:upto], attention_mask=mask[:, :upto],
                 position_ids=_positions(mask)[:, start:upto], past_key_values=cache, use_cache=True,
                 logits_to_keep=1, **kw)


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


def _common_prefill(model, enc, cache, n: int) -> dict:
    """:func:`_shared_prefill` after a common prefix: the suffixes but their last token join ``cache``
    (already the batch's), which is then repeated ``n`` times."""
    width = enc["input_ids"].shape[1]
    if width - cache.get_seq_length() > 1:
        cache = _extend(model, enc, cache, width - 1).past_key_values
    cache.batch_repeat_interleave(n)
    return dict(input_ids=enc["input_ids"].repeat_interleave(n, 0),
                attention_mask=enc["attention_mask"].repeat_interleave(n, 0), past_key_values=cache)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], batch_size: int = 16, max_new_tokens: int = 128,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_return_sequences: int = 1, progress: bool = True, desc: str = "generate",
             share_prefix: bool = True, share_common_prefix: bool = True, return_ids: bool = False,
             attention: str | None = "auto", **generate_kwargs):
    """Completions for ``prompts`` (a list of str, or of lists when num_return_sequences > 1).
    ``batch_size`` counts prompts; a batch decodes ``batch_size * num_return_sequences`` sequences.
    ``share_prefix``: each prompt prefilled once for its n samples; ``share_common_prefix``: the batch's
    common token prefix prefilled once for all its prompts (module docstring). ``return_ids``: each completion as
    its token ids up to and including the first end token (all of them when none came), instead of text.
    ``attention``: the attention implementation while generating (:func:`decode_attention`); "auto" is eager for a
    bf16 model on the CPU and the model's own otherwise. Extra keyword arguments go to HF ``generate`` (e.g.
    ``min_new_tokens``, a list ``eos_token_id``)."""
    model.eval()
    out: list = [None] * len(prompts)
    n, shared = num_return_sequences, share_prefix and num_return_sequences > 1
    kwargs = {**dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=1 if shared else n,
                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id), **generate_kwargs}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    head = grade_head_of(model)
    if head is not None:  # the grade head's logits at a cached decoding step (she_lib.grade_head)
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([GradeHeadProcessor(head),
                                                          *kwargs.get("logits_processor", [])])
    with decode_attention(model, generation_attention(model, attention)):
        bar = tqdm(total=len(prompts), desc=desc, disable=not progress)
        for idx in _batches(prompts, tokenizer, batch_size):
            batch = [prompts[i] for i in idx]
            common = _encode_shared(model, tokenizer, batch, model.device) if share_common_prefix else None
            if common and shared:
                enc = common[0]
                ids = model.generate(**_common_prefill(model, enc, common[1], n), **kwargs)
            elif common:  # HF generate repeats each row n times, then prefills the suffixes after the cached prefix
                enc, cache = common
                cache.batch_repeat_interleave(n)
                ids = model.generate(**enc, past_key_values=cache, **{**kwargs, "num_return_sequences": n})
            else:
                enc = _encode(tokenizer, batch, model.device)
                if shared and enc["input_ids"].shape[1] > 1:  # a one-token prompt has nothing to share
                    ids = model.generate(**_shared_prefill(model, enc, n), **kwargs)
                else:
                    ids = model.generate(**enc, **{**kwargs, "num_return_sequences": n})
            ids = ids[:, enc["input_ids"].shape[1]:]
            texts = (_until_end(ids, kwargs["eos_token_id"]) if return_ids
                     else tokenizer.batch_decode(ids, skip_special_tokens=True))
            for k, i in enumerate(idx):
                chunk = texts[k * n:(k + 1) * n]
                out[i] = chunk if n > 1 else chunk[0]
            bar.update(len(idx))
    bar.close()
    return out


def generation_attention(model, attention: str | None = "auto") -> str | None:
    """``attention`` resolved: "auto" -> "eager" for a bf16 model on the CPU (torch's CPU SDPA kernel is slow on
    decoding's one-token queries in bf16: 1.7x fewer tokens/s in benchmarks/bench_decode.py), else None (leave it)."""
    if attention != "auto":
        return attention
    p = next(model.parameters())
    return "eager" if p.device.type == "cpu" and p.dtype == torch.bfloat16 else None


def _until_end(ids: torch.Tensor, eos) -> list[list[int]]:
    """Each row's ids up to and including its first end token (``eos``: an id or a list), or the whole row."""
    ends = set(eos if isinstance(eos, (list, tuple)) else [eos])
    rows = []
    for row in ids.tolist():
        cut = next((k for k, t in enumerate(row) if t in ends), len(row) - 1)
        rows.append(row[:cut + 1])
    return rows


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


def _answer_outputs(model, tokenizer, texts: list[str], batch_size: int, share_common_prefix: bool,
                    hidden: bool, desc: str, progress: bool):
    """(row indices, output) of one forward pass per batch over ``texts``, the logits of the last position only
    (and every layer's hidden states with ``hidden``), sharing each batch's common prefix where it can."""
    bar = tqdm(total=len(texts), desc=desc, disable=not progress)
    extra = {"output_hidden_states": True} if hidden else {}
    for idx in _batches(texts, tokenizer, batch_size):
        batch = [texts[i] for i in idx]
        common = _encode_shared(model, tokenizer, batch, model.device) if share_common_prefix else None
        if common:
            enc, cache = common
            out = _extend(model, enc, cache, enc["input_ids"].shape[1], **extra)
        else:
            enc = _encode(tokenizer, batch, model.device)
            out = model(**enc, position_ids=_positions(enc["attention_mask"]), logits_to_keep=1, **extra)
        yield idx, out
        bar.update(len(idx))
    bar.close()


@contextmanager
def lm_head_input(model):
    """Yield a dict whose ``"h"`` is, after each forward inside the block, the input of the model's LM head module
    (the final-norm states of the positions it scores); absent where a forward never called that module (a fused
    head, as TRL's and Unsloth's losses use)."""
    seen = {}
    hook = base_of(model).get_output_embeddings().register_forward_hook(
        lambda mod, args, res: seen.__setitem__("h", args[0]))
    try:
        yield seen
    finally:
        hook.remove()


def head_logits(model, h: torch.Tensor, ids) -> torch.Tensor:
    """[..., len(ids)] fp32 logits of the tokens ``ids`` from the LM head's input ``h`` ([B, hidden] or
    [B, T, hidden])::

        z_k = fp32(h) . fp32(w_k)        (w_k: the LM head's row of token ids[k])

    and, where an installed grade head (she_lib.grade_head) swapped the grade rows in the forward that produced
    ``h``, z_k = fp32(h) . fp32(r_k) for its tokens there. Why: a bf16 model's logits are rounded to its 8-bit
    mantissa (steps of 0.125 near 16-32), coarse enough to flip the argmax of two close grades; the products in fp32
    are the logits the bf16 states imply. A head that is not a bias-free linear map of ``h`` raises."""
    base = base_of(model)
    head = base.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(f"head_logits needs a bias-free nn.Linear LM head, got {type(head).__name__}")
    ids = [int(i) for i in ids]
    hf = h.float()
    z = hf @ head.weight[torch.tensor(ids, device=head.weight.device)].float().T
    state = grade_head_of(model)
    if state is not None and state.mask is not None:
        mask = state.mask[:, -1] if h.dim() == 2 else state.mask[:, -h.shape[1]:]
        for k, tok in enumerate(ids):
            if tok in state.head.token_ids:
                r = state.head.rows[state.head.token_ids.index(tok)].to(hf.device).float()
                z[..., k] = torch.where(mask.to(z.device), hf @ r, z[..., k])
    return z


@torch.inference_mode()
def grade_probabilities(model, tokenizer, prompts: list[str], words, prefix: str = "<grade>",
                        batch_size: int = 32, progress: bool = True, share_common_prefix: bool = True,
                        fp32: bool = False) -> np.ndarray:
    """[n, len(words)] probabilities of each grade at the answer position (no decoding). ``share_common_prefix``:
    the batch's common token prefix is run once (module docstring). ``fp32``: the grade logits are
    :func:`head_logits` of the LM head's input instead of the model's own logits (bf16 on a bf16 model)."""
    model.eval()
    ids = torch.tensor(grade_token_ids(tokenizer, words))
    texts = [p + prefix for p in prompts]
    out = np.zeros((len(texts), len(ids)), dtype=np.float64)
    with lm_head_input(model) if fp32 else nullcontext({}) as seen:  # the hook only where its states are read
        for idx, o in _answer_outputs(model, tokenizer, texts, batch_size, share_common_prefix, False,
                                      "first-token", progress):
            if fp32 and "h" in seen:
                z = head_logits(model, seen.pop("h")[:, -1, :], ids.tolist())
            else:
                z = o.logits[:, -1, :].float()[:, ids.to(o.logits.device)]
            out[idx] = torch.softmax(z, dim=-1).cpu().numpy()
    return out


@torch.inference_mode()
def answer_states(model, tokenizer, prompts: list[str], layers=(-1,), prefix: str = "<grade>", batch_size: int = 32,
                  progress: bool = True, share_common_prefix: bool = True) -> np.ndarray:
    """[n, len(layers) * hidden] float32: the hidden state at the answer position (the last token of ``prompt +
    prefix``, where :func:`grade_probabilities` reads its logits) of each layer in ``layers``, concatenated.
    Layers index ``output_hidden_states``: 0 is the embeddings, -1 the last layer after the final norm (the state
    the LM head reads)."""
    model.eval()
    texts = [p + prefix for p in prompts]
    out = None
    for idx, o in _answer_outputs(model, tokenizer, texts, batch_size, share_common_prefix, True, "answer states",
                                  progress):
        h = torch.cat([o.hidden_states[k][:, -1, :].float() for k in layers], dim=-1).cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), h.shape[1]), dtype=np.float32)
        out[idx] = h
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
