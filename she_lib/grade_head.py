"""A grade head read at the grade position only: the grade words' logits after ``<grade>`` come from their own rows.

Why: she_lib.probe_head writes the grade probe into the LM head's rows of the grades' first tokens. Those rows then
fire at every position, so the rationale's steps start naming grades where SFT wrote words (decoded step accuracy
0.500 -> 0.421 for the cpu-full SFT model, docs/results.md). Here the LM head is left as SFT trained it, and only at
a position whose last tokens are the tag ``<grade>`` (``tag_ids``) are the logits of the grades' first tokens
(``token_ids``) replaced:

    z_k(t) = r_k . h_t   if ids[t-|tag|+1 .. t] = tag,   else   w_k . h_t

(h_t: the final-norm state the LM head reads, r_k: the head's rows, w_k: the LM head's). Every other logit is the
LM head's everywhere.

How: :meth:`GradeHead.install` puts two hooks on the model (its weights and ``state_dict`` are untouched): a pre-hook
on the decoder reads the ``input_ids`` of each forward, and a hook on the LM head swaps the K logits where the tag
ends inside those ids. That covers every full-sequence forward: training log-probabilities (the RL trainer's loss
reads r_k . h at the grade token, and its gradient reaches h, not r_k) and the first-token read-out
(``prompt + "<grade>"``). A cached decoding step sees only its new tokens, so the hook also keeps the last
position's r . h, and :class:`GradeHeadProcessor`, which ``inference.generate`` puts first among the logits processors
of a model with a head, swaps them in the rows whose generated ids end with the tag. HF ``generate`` and the project's
rollouts (``inference.generate`` on a merged copy, she_lib.rollouts) take these paths; TRL's own generation and vLLM do
not, and refuse a model with a head (rollouts.rollout_func_for).

A run folder holds the head as ``grade_head.safetensors`` (``rows``, ``token_ids``, ``tag_ids``);
``modeling.load_run`` installs it, also under the runs that start from that folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FILE = "grade_head.safetensors"


def tag_ends(ids: torch.Tensor, tag: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at t where ids[:, t-k+1 .. t] equals ``tag`` (k = len(tag)); False where t < k - 1."""
    k = len(tag)
    out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    if ids.shape[1] >= k:
        out[:, k - 1:] = (ids.unfold(1, k, 1) == tag.to(ids.device)).all(-1)
    return out


@dataclass
class GradeHead:
    tag_ids: list[int]  # the tokens of "<grade>"
    token_ids: list[int]  # the grade words' first tokens (inference.grade_token_ids)
    rows: torch.Tensor  # [K, hidden]: r_k

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / FILE
        save_file({"rows": self.rows.detach().float().contiguous(), "token_ids": torch.tensor(self.token_ids),
                   "tag_ids": torch.tensor(self.tag_ids)}, str(path))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "GradeHead":
        from safetensors.torch import load_file

        t = load_file(str(Path(folder) / FILE))
        return cls(t["tag_ids"].tolist(), t["token_ids"].tolist(), t["rows"])

    def install(self, model) -> "_Hooks":
        """Hook this head into ``model`` (a causal LM, or a peft model around one); returns the hooks' state, also
        kept as ``model._she_grade_head`` (:func:`grade_head_of`). A model holds one head."""
        base = base_of(model)
        if getattr(base, "_she_grade_head", None) is not None:
            raise ValueError("the model already has a grade head")
        state = _Hooks(self)
        base.get_decoder().register_forward_pre_hook(state.read_ids, with_kwargs=True)
        base.get_output_embeddings().register_forward_hook(state.swap)
        base._she_grade_head = state
        return state


def base_of(model):
    """The causal LM inside a peft model (``get_base_model()``), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def grade_head_of(model) -> "_Hooks | None":
    """The installed head's state of ``model`` (a causal LM or a peft model around one), or None."""
    base = base_of(model)
    return getattr(base, "_she_grade_head", None)


class _Hooks:
    """Per-model state of an installed head: the current forward's tag mask and the last position's r . h."""

    def __init__(self, head: GradeHead):
        self.head, self.mask, self.last = head, None, None
        self.tag, self.ids = torch.tensor(head.tag_ids), torch.tensor(head.token_ids)

    def read_ids(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.mask = tag_ends(ids, self.tag) if ids is not None else None  # inputs_embeds alone: no swap

    def swap(self, module, inputs, logits):
        h = inputs[0]
        z = h @ self.head.rows.to(device=h.device, dtype=h.dtype).T  # [B, T', K]
        self.last = z[:, -1].detach()
        if self.mask is None:
            return None
        mask = self.mask[:, -h.shape[1]:]
        if not mask.any():
            return None
        ids = self.ids.to(logits.device)
        new = torch.where(mask[..., None], z.to(logits.dtype), logits[..., ids])
        return logits.index_copy(-1, ids, new)


class GradeHeadProcessor:
    """A logits processor for HF ``generate`` (a callable; ``LogitsProcessorList`` needs no base class, and this module
    stays free of transformers): in the rows whose ids end with the tag, the grades' scores become the head's r . h of the
    forward that produced ``scores`` (the hook's ``last``); other rows and tokens as they are."""

    def __init__(self, state: _Hooks):
        self.state = state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hit = tag_ends(input_ids, self.state.tag)[:, -1]
        last = self.state.last
        if not hit.any() or last is None:
            return scores
        if last.shape[0] != scores.shape[0]:
            raise RuntimeError(f"grade head: {last.shape[0]} rows in the last forward, {scores.shape[0]} scores")
        ids = self.state.ids.to(scores.device)
        scores = scores.clone()
        scores[hit.nonzero()[:, :1], ids] = last[hit].to(scores.dtype)
        return scores
