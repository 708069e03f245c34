"""CPU (no-Triton) support for TRL 1.15's fused LM head.

TRL 1.15's ``SFTTrainer``, ``DPOTrainer`` and ``GRPOTrainer`` (also RLOO and KTO) always patch the model with
``trl.trainer.utils.add_fused_lm_head``; there is no config switch to turn it off. Its forward calls
``trl.trainer.utils._ChunkedLogProbFunction.apply(...)``, a Triton kernel that is ``None`` when Triton is missing
(CPU-only torch), so the first step fails with::

    AttributeError: 'NoneType' object has no attribute 'apply'

``ensure_trl_cpu_support()`` installs ``ChunkedLogProbFunction`` below, a pure-torch implementation of the same
contract, in that slot. Call it before building a trainer (it also runs when this module is imported).

Contract (``hidden [N, H]``, ``weight [V, H]``, ``bias [V] | None``, ``targets [N]``, all rows already unmasked)::

    y = hidden @ weight.T + bias
    z = y * logit_scale
    z = softcap * tanh(z / softcap)        # only when softcap (final_logit_softcapping) is non-zero
    z = z * (1 / temperature)
    log_p = log_softmax(z)                 # over the vocabulary, in float32
    returns (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), each [N], None unless named in `outputs`
      log_probs        = log_p[target]                       (always; differentiable)
      entropy          = -sum_v p_v * log_p_v                (differentiable)
      log_sum_sq_probs = log(sum_v p_v ** 2)                 (no gradient)
      mean_logits      = mean_v z_v                          (no gradient)
      is_top1          = argmax_v z_v == target (first max)  (bool, no gradient)

Rows are processed in chunks of ``_MAX_TILE_ELEMENTS // V`` tokens, so only a ``[chunk, V]`` float32 logits tile
lives at a time; the backward recomputes each tile (gradients accumulate in float32). TRL's ``chunk_size`` argument
(a vocabulary tile width for the Triton kernel) is accepted and ignored.

Other CPU traps seen with TRL 1.15 (the tests apply the fixes for the first and fourth):

* TRL configs default ``bf16=True`` (when ``fp16`` is unset) and ``gradient_checkpointing=True``, unlike
  ``TrainingArguments``. With this fallback both still run on CPU (bf16 autocast; checked for one step of each
  trainer), but they are slower and less precise there: pass ``use_cpu=True, bf16=False, gradient_checkpointing=False``.
* The fallback replaces the kernel only while Triton is missing. With a CUDA torch (Triton present) but a CPU-only
  run, TRL still picks the Triton kernel; that case is not handled here.
* Not TRL-specific: with other jobs on the 2 cores, torch's OpenMP threads spin-wait and tiny ops slowed ~100x
  (the reference test took 2.2 s instead of 0.02 s); ``torch.set_num_threads(1)`` fixes it for tiny models.
* ``DistillationTrainer`` uses a separate Triton kernel (``trl.kernels.chunked_divergence``) not covered here.
"""

import torch

# Float32 elements of one [tokens, vocab] logits tile (32 MiB).
_MAX_TILE_ELEMENTS = 1 << 23
_OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _per_token_fields(hidden, weight, bias, targets, temperature, softcap, logit_scale, outputs):
    """Reference formula of the module docstring for one chunk of rows; float32, autograd-friendly."""
    y = hidden.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    z = y * logit_scale
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    z = z * (1.0 / temperature)
    log_p = torch.log_softmax(z, dim=-1)
    log_probs = log_p.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
    log_sum_sq_probs = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
    mean_logits = z.mean(-1) if "mean_logits" in outputs else None
    is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
    return log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1


def _row_chunks(n_rows, vocab):
    step = max(1, _MAX_TILE_ELEMENTS // max(vocab, 1))
    for start in range(0, max(n_rows, 1), step):  # one (possibly empty) chunk when n_rows == 0
        yield slice(start, min(start + step, n_rows))


class ChunkedLogProbFunction(torch.autograd.Function):
    """Pure-torch drop-in for ``trl.kernels.ChunkedLogProbFunction`` (same ``apply`` signature and outputs)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size,
                final_logit_softcapping=None, logit_scale=1.0, outputs=_OPTIONAL_OUTPUTS):
        ctx.set_materialize_grads(False)  # an unused entropy gets no gradient, not a zero tensor
        ctx.args = (temperature, final_logit_softcapping, logit_scale)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.float()
            b = None if bias is None else bias.float()
            parts = [_per_token_fields(hidden[rows], w, b, targets[rows], *ctx.args, outputs)
                     for rows in _row_chunks(hidden.shape[0], weight.shape[0])]
        fields = [None if col[0] is None else torch.cat(col) for col in zip(*parts)]
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.mark_non_differentiable(*(x for x in fields[2:] if x is not None))
        return tuple(fields)

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        hidden, weight, bias, targets = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        grads = [None, None, None]
        if (grad_log_probs is None and grad_entropy is None) or not any(needs):
            return (*grads, None, None, None, None, None, None)
        with torch.enable_grad(), torch.autocast(hidden.device.type, enabled=False):
            w = weight.detach().float().requires_grad_(needs[1])
            b = None if bias is None else bias.detach().float().requires_grad_(needs[2])
            acc = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) if need and t is not None else None
                   for t, need in zip((hidden, weight, bias), needs)]
            for rows in _row_chunks(hidden.shape[0], weight.shape[0]):
                h = hidden[rows].detach().float().requires_grad_(needs[0])
                want = ("entropy",) if grad_entropy is not None else ()
                log_probs, entropy, *_ = _per_token_fields(h, w, b, targets[rows], *ctx.args, want)
                total = log_probs.new_zeros(())
                if grad_log_probs is not None:
                    total = total + (log_probs * grad_log_probs[rows].float()).sum()
                if grad_entropy is not None:
                    total = total + (entropy * grad_entropy[rows].float()).sum()
                inputs = [(i, t) for i, t in enumerate((h, w, b)) if needs[i] and t is not None]
                chunk_grads = torch.autograd.grad(total, [t for _, t in inputs], allow_unused=True)
                for (i, _t), g in zip(inputs, chunk_grads):
                    if g is None:
                        continue
                    if i == 0:
                        acc[0][rows] = g
                    else:
                        acc[i] += g
        grads = [None if g is None else g.to(t.dtype) for g, t in zip(acc, (hidden, weight, bias))]
        return (*grads, None, None, None, None, None, None)


def ensure_trl_cpu_support() -> bool:
    """Install ``ChunkedLogProbFunction`` into TRL if its Triton kernel is unavailable (idempotent).

    Returns ``True`` when TRL now uses this pure-torch fallback (installed by this call or an earlier one), ``False``
    when TRL's own Triton kernel is available (nothing is changed) or TRL is not installed.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is None:
        trl_utils._ChunkedLogProbFunction = ChunkedLogProbFunction
    return trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction


ensure_trl_cpu_support()
