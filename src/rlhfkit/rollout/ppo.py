"""PPO rollouts: sample with the KV cache, then score under exactly the masks training will use.

Design §6 rules 1-2: tokens are drawn from softmax(logits / T) with no other warping (a warp is
only possible through `top_k` or `repetition_penalty`, which the health check is there to catch), and every
log-prob
comes from a scoring pass over left-padded prompts + right-padded responses with
position_ids = cumsum(attention_mask) - 1, the same pass the PPO update runs. So on the first
minibatch the new/old probability ratio is exactly 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rlhfkit.data.collate import left_pad
from rlhfkit.data.templates import encode_prompt
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.prefix import cache_name, position_ids, prefill
from rlhfkit.models.shared import adapter_merged
from rlhfkit.ops import entropy_from_logits, logprobs_from_logits


@dataclass
class Rollout:
    query_ids: torch.Tensor
    """(B, P) prompt tokens, left-padded."""
    query_mask: torch.Tensor
    """(B, P) 1 on real prompt tokens."""
    response_ids: torch.Tensor
    """(B, R) sampled tokens; positions after the first EOS hold pad."""
    response_mask: torch.Tensor
    """(B, R) 1 up to and including the first EOS."""
    finished: torch.Tensor
    """(B,) True where an EOS was sampled."""
    sampled_logprobs: torch.Tensor | None = None
    """(B, R) log-probs of the sampled tokens at T from the sampling forward (merged adapter, KV cache):
    score()'s up to float rounding. Evaluation's KL reads them instead of a second forward; training
    never does: its ratio needs score()'s exact unmerged pass (design §6.1)."""

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)  # (B, P+R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)  # (B, P+R)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def rows(self, index) -> Rollout:
        return Rollout(
            *(
                t[index]
                for t in (
                    self.query_ids,
                    self.query_mask,
                    self.response_ids,
                    self.response_mask,
                    self.finished,
                )
            ),
            None if self.sampled_logprobs is None else self.sampled_logprobs[index],
        )

    def token_rows(self) -> list[list[int]]:
        """Per row, unpadded: the prompt's ids, then the response's up to (not including) its EOS,
        the input format of a reward model that shares the policy's tokenizer."""
        lengths = self.response_lengths - self.finished.long()
        return [
            q[m.bool()].tolist() + r[:n].tolist()
            for q, m, r, n in zip(self.query_ids, self.query_mask, self.response_ids, lengths.tolist())
        ]


@torch.no_grad()
def sample(
    model,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    noise: torch.Tensor | None = None,
) -> Rollout:
    """Draw responses token by token with the KV cache; stop a row at its first EOS.

    Each token is drawn by inverting the CDF of softmax(logits / T) at a uniform from `noise`
    (B, max_new_tokens); giving each row its own noise makes a row's sample independent of the
    other rows in the batch (so N processes x b rows sample what 1 process x N*b rows does).
    None draws the noise from torch's global generator.

    top_k > 0 or repetition_penalty != 1 warps the sampling distribution. The scoring pass does NOT
    apply them, so log-probs no longer describe the samples: kept only so tests can reproduce that
    failure (design §6.7).
    """
    batch = query_ids.shape[0]
    noise = torch.rand(batch, max_new_tokens) if noise is None else noise
    attention = query_mask.clone()
    cache = cache_name()
    tokens, logprobs = [], []
    done = torch.zeros(batch, dtype=torch.bool)
    seen = None  # (B, V) tokens already in each row, for a repetition penalty
    for step in range(max_new_tokens):
        if step == 0:  # the prompts: each distinct one runs once (rows repeat it: best-of-n, groups, pairs)
            logits, past = prefill(model, query_ids, query_mask)  # (B, V)
        else:
            out = model(
                input_ids=tokens[-1][:, None],
                attention_mask=attention,
                position_ids=position_ids(attention)[:, -1:],
                use_cache=True,
                logits_to_keep=1,
                **{cache: past},
            )
            past = getattr(out, cache)
            logits = out.logits[:, -1].float()  # (B, V)
        log_pi = torch.log_softmax(logits / temperature, dim=-1)  # the model's own, before any warping
        if repetition_penalty != 1.0:  # as transformers' RepetitionPenaltyLogitsProcessor (design §6.7)
            if seen is None:
                seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, query_ids, query_mask.bool())
            penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        logits = logits / temperature
        if top_k > 0:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        token = inverse_cdf_draw(torch.softmax(logits, dim=-1), noise[:, step])  # (B,)
        # Rows that finished earlier feed pad with attention 0 (pad may equal EOS: mask, not id).
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        logprobs.append(log_pi.gather(1, token[:, None]).squeeze(1))
        if seen is not None:
            seen[torch.arange(batch), token] |= ~done
        attention = torch.cat([attention, (~done).long()[:, None]], dim=1)
        done = done | (token == eos_token_id)
        if done.all():
            break
    response_ids = torch.stack(tokens, dim=1)  # (B, R)
    is_eos = response_ids == eos_token_id
    # Mask: every token up to and including the first EOS (cumsum of EOS counts before t is 0).
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()
    response_mask = (eos_before == 0).long()
    sampled = torch.stack(logprobs, dim=1) * response_mask  # (B, R), 0 after the first EOS
    return Rollout(query_ids, query_mask, response_ids, response_mask, is_eos.any(-1), sampled)


def inverse_cdf_draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B,) tokens from (B, V) probabilities at uniforms u (B,): the first token whose CDF exceeds
    u x total, so a zero-probability token is never picked."""
    if not torch.isfinite(probs).all():
        raise RlhfkitError(
            "rollout: the policy's next-token probabilities are not finite (its weights diverged); "
            "likely cause: train.lr too high or float16 overflow"
        )
    cdf = probs.cumsum(-1)  # (B, V)
    token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return token.clamp(max=cdf.shape[-1] - 1)


def critic_values(critic, rollout: Rollout, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """(B, R) values from a separate value model: a sequence classifier (the RM) whose scalar head
    is read at every position, normalised like the reward ((score - mean) / std).

    values[b, t] is the head at the state before response token t, i.e. the RM's score of the
    prompt + the first t response tokens: a critic initialised from the RM starts out predicting
    the reward the response would get if it ended there (design §6.8)."""
    attention = rollout.attention_mask
    out = critic(
        input_ids=rollout.input_ids,
        attention_mask=attention,
        position_ids=position_ids(attention),
        output_hidden_states=True,
    )
    start = rollout.query_ids.shape[1] - 1
    hidden = out.hidden_states[-1][:, start:-1]  # (B, R, H)
    return (critic.score(hidden).squeeze(-1).float() - mean) / std


def score(
    model,
    rollout: Rollout,
    temperature: float,
    with_values: bool = False,
    value_head=None,
    entropy: bool = False,
    logit_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """Response log-probs (B, R) under `model` at temperature T; optionally values, the per-token
    entropy (B, R) and the logits (rows, R, V) of the first `logit_rows` rows.

    The same call serves the rollout (old/ref log-probs, no grad) and the update (with grad). The full
    (B, R, V) logits are dropped here: the rollout needs only the entropy of every row and the logits
    of the rows the exact KL reads (ppo.kl_exact_rows), so an iteration does not hold 2 x B x R x V
    floats for the old and reference passes (design §6.9).
    """
    attention = rollout.attention_mask
    n_response = rollout.response_ids.shape[1]
    # Only the R positions that predict response tokens need the LM head: logits_to_keep skips the
    # (B, P, V) head output of the prompt positions (a large share of a small model's FLOPs and
    # memory, in every rollout and update forward). Slicing from the end also suits a model that
    # ignores logits_to_keep and returns every position.
    out = model(
        input_ids=rollout.input_ids,
        attention_mask=attention,
        position_ids=position_ids(attention),
        output_hidden_states=with_values,
        logits_to_keep=n_response + 1,
    )
    start = rollout.query_ids.shape[1] - 1  # logits at position t predict token t+1
    logits = out.logits[:, -(n_response + 1) : -1].float()  # (B, R, V)
    result = {"logprobs": logprobs_from_logits(logits, rollout.response_ids, temperature=temperature)}
    if with_values:
        hidden = out.hidden_states[-1][:, start:-1]  # (B, R, H): value of the state before each token
        result["values"] = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    if entropy:
        result["entropy"] = entropy_from_logits(logits, temperature)
    if logit_rows is not None:
        # A copy, so the (B, R, V) tensor the slice would keep alive is freed with `out`.
        result["logits"] = logits[:logit_rows].clone()
    return result


def row_noise(seed: int, rows: range, steps: int) -> torch.Tensor:
    """(len(rows), steps) sampling uniforms for `sample`; row g's are a pure function of (seed, g)."""
    return torch.stack(
        [torch.rand(steps, generator=torch.Generator().manual_seed(seed * 100_003 + g)) for g in rows]
    )


def sample_prompts(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    noise: torch.Tensor | None = None,
    merge_lora: bool = True,
) -> Rollout:
    """Tokenise rendered prompts as every stage does (`encode_prompt`, so a reward model trained on
    `render`'s ids reads these), left-pad, then `sample`: the rollout PPO trains on and eval measures.

    A LoRA policy samples with its adapter merged into temporary weights (models.shared.adapter_merged:
    the base weights are bit-identical afterwards), unless merge_lora=False: per decode step one matmul
    per adapted layer instead of three. The tokens may differ from unmerged sampling by float rounding;
    their log-probs come from the scoring pass, which always runs the unmerged forward (design §6.1)."""
    query_ids, query_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    model.eval()
    with adapter_merged(model) if merge_lora else contextlib.nullcontext():
        return sample(
            model,
            query_ids,
            query_mask,
            max_new_tokens,
            temperature,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            noise=noise,
        )


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Response texts up to the first EOS (the tokens the response mask covers)."""
    return [
        tokenizer.decode(ids[m.bool()], skip_special_tokens=True).strip()
        for ids, m in zip(rollout.response_ids, rollout.response_mask)
    ]
