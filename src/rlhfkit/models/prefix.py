"""Shared prompts computed once: a causal LM runs over each distinct prompt one time, then over every
continuation of it from a copy of the prompt's KV cache (docs/design.md §3.5).

In RLHF many rows share their prompt: a preference pair's chosen and rejected, RLOO/GRPO's k samples
of one prompt, best-of-n's n draws. With prompts of ~20 tokens and responses of ~10 the prompt is most
of each row, and the plain forward computes it once per row. Here a batch is
  prompts   (P, Tp) left-padded, run once with position ids cumsum(mask) - 1 (as rollout/ppo.py), and
  rows      (N,) each continuation's prompt index, continuations (N, Tc) right-padded,
and the continuations run from the prompts' cache gathered along the batch (index_select, so a
training loss gets gradients through the shared prompt pass too). Every position sees exactly the
tokens and positions it sees in the plain row prompt + continuation; only the float rounding differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from inspect import signature

import torch

from rlhfkit.data.collate import left_pad, right_pad


def cache_name() -> str:
    """The KV cache's argument and output field: transformers 5.2x renamed `past_key_values` -> `cache`."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class SharedPrompts:
    """Continuations that name their prompt, padded for `continuation_logits`/`continuation_hidden`."""

    prompt_ids: torch.Tensor
    """(P, Tp) the distinct prompts, left-padded: each prompt's last token is at Tp - 1."""
    prompt_mask: torch.Tensor
    """(P, Tp) 1 on real prompt tokens."""
    rows: torch.Tensor
    """(N,) the index into the prompts of each continuation."""
    ids: torch.Tensor
    """(N, Tc) continuation tokens, right-padded (Tc may be 0)."""
    mask: torch.Tensor
    """(N, Tc) 1 on real continuation tokens; a row of zeros is an empty continuation."""

    @classmethod
    def of(
        cls, prompts: list[list[int]], rows: list[int], continuations: list[list[int]], pad_token_id: int
    ) -> SharedPrompts:
        prompt_ids, prompt_mask = left_pad(prompts, pad_token_id)
        index = torch.tensor(rows, dtype=torch.long)
        return cls(prompt_ids, prompt_mask, index, *_padded(continuations, pad_token_id))

    @classmethod
    def split(cls, sequences: list[list[int]], prompt_lengths: list[int], pad_token_id: int) -> SharedPrompts:
        """Rows given whole (prompt ids + continuation ids) with each prompt's length: rows whose
        prompts are the same ids share one prompt."""
        index: dict[tuple[int, ...], int] = {}
        rows = [index.setdefault(tuple(s[:n]), len(index)) for s, n in zip(sequences, prompt_lengths)]
        continuations = [s[n:] for s, n in zip(sequences, prompt_lengths)]
        return cls.of([list(p) for p in index], rows, continuations, pad_token_id)

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) (N, T): each row whole, prompt + continuation, right-padded, the
        batch the plain forward reads."""
        sequences = [
            torch.cat([p[m.bool()], c[k.bool()]]).tolist()
            for p, m, c, k in zip(
                self.prompt_ids[self.rows], self.prompt_mask[self.rows], self.ids, self.mask
            )
        ]
        return right_pad(sequences, 0)  # padding is masked: its id never matters


def _padded(continuations: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    if any(continuations):
        return right_pad(continuations, pad_token_id)
    empty = torch.zeros(len(continuations), 0, dtype=torch.long)  # right_pad needs one token to size by
    return empty, empty


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count attended tokens only (a left-padded row starts at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def shares_cache(model) -> bool:
    """Whether the prompt pass can hand its KV cache on. Under gradient checkpointing a training forward
    drops the cache (transformers would recompute the blocks, and the cache with them, in backward)."""
    if not (model.training and torch.is_grad_enabled()):
        return True
    # transformers' own test (is_activation_checkpointing), spelled out: its name changed in 5.x.
    return not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def prompt_pass(model, batch: SharedPrompts, hidden: bool, **extra):
    """(output, KV cache of the prompts) of one forward over the distinct prompts."""
    name = cache_name()
    out = model(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask,
        position_ids=position_ids(batch.prompt_mask),
        use_cache=True,
        output_hidden_states=hidden,
        **extra,
    )
    return out, getattr(out, name, None)


def _gathered(cache, rows: torch.Tensor):
    """A new DynamicCache holding each continuation's own copy of its prompt's keys and values: the
    continuation pass appends to that copy, so `cache` itself is never changed (a second call reuses it)."""
    from transformers import DynamicCache

    layers = [
        (k.index_select(0, rows), v.index_select(0, rows)) + (() if sliding is None else (sliding,))
        for k, v, sliding in cache
    ]
    return DynamicCache(layers)


def continuation_pass(model, batch: SharedPrompts, cache, hidden: bool, **extra):
    """The continuations' forward from their prompts' cache: the mask covers prompt + continuation, and
    positions go on from each prompt's length."""
    rows = batch.rows
    prompt_mask = batch.prompt_mask.index_select(0, rows)
    attention = torch.cat([prompt_mask, batch.mask], dim=1)  # (N, Tp + Tc)
    return model(
        input_ids=batch.ids,
        attention_mask=attention,
        position_ids=position_ids(attention)[:, prompt_mask.shape[1] :],
        use_cache=True,
        output_hidden_states=hidden,
        **{cache_name(): _gathered(cache, rows)},
        **extra,
    )


def _usable(cache, batch: SharedPrompts) -> bool:
    """A DynamicCache that holds every prompt token (a model without a cache, or one that dropped it,
    returns None or an empty one)."""
    from transformers import DynamicCache

    return isinstance(cache, DynamicCache) and cache.get_seq_length() == batch.prompt_ids.shape[1]


def continuation_logits(model, batch: SharedPrompts) -> torch.Tensor:
    """(N, Tc, V) float logits; [:, t] is the distribution continuation token t was drawn from (t = 0:
    the prompt's last position). The LM head runs only at these positions (logits_to_keep)."""
    _check(batch)
    if not shares_cache(model):
        return _full_logits(model, batch)
    out, cache = prompt_pass(model, batch, hidden=False, **keep_logits(model, 1))
    if not _usable(cache, batch):
        return _full_logits(model, batch)
    return _continued_logits(model, batch, out.logits[:, -1:], cache)


def _continued_logits(model, batch: SharedPrompts, last: torch.Tensor, cache) -> torch.Tensor:
    """continuation_logits from the prompts' pass: `last` (P, 1, V) its logits at each prompt's last token."""
    width = batch.ids.shape[1]
    first = last.index_select(0, batch.rows)  # (N, 1, V): predicts continuation token 0
    if width <= 1:
        return first.float()[:, :width]
    # Positions 0..Tc-2 predict tokens 1..Tc-1; the last position predicts past the continuation. Slicing
    # also suits a model that ignores logits_to_keep and returns all Tc.
    keep = keep_logits(model, torch.arange(width - 1, device=batch.ids.device))
    rest = continuation_pass(model, batch, cache, hidden=False, **keep).logits[:, : width - 1]
    return torch.cat([first, rest], dim=1).float()


def continuation_hidden(model, batch: SharedPrompts) -> torch.Tensor:
    """(N, Tc + 1, H) final hidden states (after the final norm, the input of a score or value head):
    [:, 0] at the prompt's last token, [:, t + 1] at continuation token t. An empty continuation's last
    state is [:, 0]; any row's is [:, mask.sum(-1)]."""
    _check(batch)
    if not shares_cache(model):
        return _full_hidden(model, batch)
    out, cache = prompt_pass(model, batch, hidden=True, **keep_logits(model, 1))
    if not _usable(cache, batch):
        return _full_hidden(model, batch)
    return _continued_hidden(model, batch, out.hidden_states[-1][:, -1:], cache)


def _continued_hidden(model, batch: SharedPrompts, last: torch.Tensor, cache) -> torch.Tensor:
    """continuation_hidden from the prompts' pass: `last` (P, 1, H) its final hidden state at each
    prompt's last token."""
    first = last.index_select(0, batch.rows)  # (N, 1, H)
    if batch.ids.shape[1] == 0:
        return first
    rest = continuation_pass(model, batch, cache, hidden=True, **keep_logits(model, 1)).hidden_states[-1]
    return torch.cat([first, rest], dim=1)


def _check(batch: SharedPrompts) -> None:
    if batch.prompt_ids.shape[1] == 0 or not batch.prompt_mask[:, -1].all():
        raise ValueError("every prompt needs a token: continuation token 0 is read off the prompt's last")


def keep_logits(model, positions) -> dict:
    """logits_to_keep=positions (an int: the last n; a tensor: these) for a model whose forward takes it
    (transformers' causal LMs: the LM head then runs only there), else nothing: a sequence classifier's
    head is one scalar per position. A caller slices the logits either way."""
    inner = getattr(model, "module", model)  # DDP
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return {"logits_to_keep": positions} if "logits_to_keep" in signature(inner.forward).parameters else {}


# The fallbacks: the plain forward over whole rows (prompt + continuation, right-padded), read at the
# same positions. For models whose forward hands back no usable cache (gradient checkpointing in
# training, a model without a DynamicCache).


def _full_logits(model, batch: SharedPrompts) -> torch.Tensor:
    input_ids, attention_mask = batch.full()
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    positions = _row_positions(batch).clamp(max=logits.shape[1] - 1)  # past a short row: padding
    return logits.float().gather(1, _expand(positions, logits.shape[-1]))


def _full_hidden(model, batch: SharedPrompts) -> torch.Tensor:
    input_ids, attention_mask = batch.full()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[-1]
    positions = torch.cat([_row_positions(batch), _row_positions(batch)[:, -1:] + 1], dim=1)
    return hidden.gather(1, _expand(positions.clamp(max=hidden.shape[1] - 1), hidden.shape[-1]))


def _row_positions(batch: SharedPrompts) -> torch.Tensor:
    """(N, Tc) the position in a whole right-padded row of the prompt's last token (t = 0) and of
    continuation tokens 0..Tc-2: where the logits predicting continuation token t are."""
    lengths = batch.prompt_mask.sum(-1).index_select(0, batch.rows)  # (N,)
    return lengths[:, None] - 1 + torch.arange(batch.ids.shape[1], device=lengths.device)[None, :]


def _expand(positions: torch.Tensor, width: int) -> torch.Tensor:
    return positions[:, :, None].expand(-1, -1, width)


# ----------------------------------------------------------------------------- the sampler's prefill


def prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, object]:
    """((B, V) float logits of each row's first response token, KV cache with a copy per row) for B
    left-padded prompt rows, each distinct prompt run once: best-of-n's draws, RLOO/GRPO's group and a
    preference pair's two samples repeat their prompt, and the prompt pass is about half of sampling 16
    tokens (design §3.5). Rows that are all distinct (or a model without a DynamicCache) run as one
    plain batch."""
    from transformers import DynamicCache

    distinct, rows = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
    if len(distinct) < len(prompt_ids):
        ids, mask = distinct.split(prompt_ids.shape[1], dim=1)
        out, cache = _last_logits(model, ids, mask)
        if isinstance(cache, DynamicCache):
            return out.logits[:, -1].float().index_select(0, rows), _gathered(cache, rows)
    out, cache = _last_logits(model, prompt_ids, prompt_mask)
    return out.logits[:, -1].float(), cache


def _last_logits(model, ids: torch.Tensor, mask: torch.Tensor):
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=True,
        logits_to_keep=1,  # only the last position's logits: the prefill skips (B, P-1, V) of LM head
    )
    return out, getattr(out, cache_name())


# ----------------------------------------------------------------------------- prompts kept across calls


class PromptCache:
    """A model's prompt pass over a fixed set of prompts, kept, so continuations of them are scored in
    many later calls without running a prompt again: the evaluation scores every policy's samples of the
    same held-out prompts under the reference (logits) and the reward model (`hidden`: final hidden
    states for its score head) (design §3.5)."""

    @torch.no_grad()
    def __init__(self, model, prompts: list[list[int]], pad_token_id: int, hidden: bool = False):
        self.model, self.pad_token_id, self.is_hidden = model, pad_token_id, hidden
        self.index = {tuple(p): i for i, p in enumerate(prompts)}
        self.lengths = sorted({len(p) for p in prompts}, reverse=True)
        self.prompts = SharedPrompts.of(prompts, [], [], pad_token_id)
        out, self.cache = prompt_pass(self.model, self.prompts, hidden=hidden, **keep_logits(model, 1))
        self.usable = shares_cache(model) and _usable(self.cache, self.prompts)
        # (P, 1, V) or (P, 1, H): each prompt's last position, which predicts continuation token 0.
        self.last = out.hidden_states[-1][:, -1:] if hidden else out.logits[:, -1:]

    def split(self, sequences: list[list[int]]) -> SharedPrompts | None:
        """Whole rows (prompt ids + continuation ids) as continuations of the kept prompts (the longest
        kept prompt each row starts with); None when a row starts with none of them."""
        rows, continuations = [], []
        for ids in sequences:
            n = next((n for n in self.lengths if tuple(ids[:n]) in self.index), None)
            if n is None or not self.usable:
                return None
            rows.append(self.index[tuple(ids[:n])])
            continuations.append(ids[n:])
        return self.continuations(rows, continuations)

    def continuations(self, rows: list[int], continuations: list[list[int]]) -> SharedPrompts:
        """Continuations of kept prompts `rows` (indices into them), padded, with the kept prompts."""
        return SharedPrompts(
            self.prompts.prompt_ids,
            self.prompts.prompt_mask,
            torch.tensor(rows, dtype=torch.long),
            *_padded(continuations, self.pad_token_id),
        )

    @torch.no_grad()
    def logits(self, prompts: list[list[int]], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """(N, Tc, V) float logits of continuations `ids` (N, Tc), right-padded with `mask`, of the given
        prompts; None when a prompt is not among the kept ones (the caller runs the plain forward)."""
        rows = [self.index.get(tuple(p)) for p in prompts]
        if self.is_hidden or not self.usable or None in rows:
            return None
        index, kept = torch.tensor(rows, dtype=torch.long), self.prompts
        batch = SharedPrompts(kept.prompt_ids, kept.prompt_mask, index, ids, mask)
        return _continued_logits(self.model, batch, self.last, self.cache)

    @torch.no_grad()
    def hidden(self, batch: SharedPrompts) -> torch.Tensor:
        """continuation_hidden of a batch from `split`/`continuations`, from the kept prompt pass."""
        return _continued_hidden(self.model, batch, self.last, self.cache)
