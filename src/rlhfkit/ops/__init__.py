"""Pure tensor math for RLHF: log-probs, KL, advantages (GAE and critic-free estimators) and losses
(SFT, RM, PPO, the DPO family). Imports torch only.

Every function states its formula and shapes in its docstring and has a naive `*_reference`
implementation beside it in its module, which the tests compare against. Masks are 0/1
tensors shaped like the values they mask; see `rlhfkit.ops.logprobs` for the shared rules.
"""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    NEEDS_VALUES,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from .gae import gae
from .kl import KL_ESTIMATORS, k1_exact_z, kl_estimate, kl_exact, kl_k1, kl_k2, kl_k3, sequence_kl
from .kl_loss import KL_LOSS_FORMS, kl_loss_k1, kl_loss_k2, kl_loss_k3, kl_loss_term
from .logprobs import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from .losses import (
    AGGREGATIONS,
    aggregate_loss,
    aggregation_count,
    bradley_terry_loss,
    explained_variance,
    masked_nll,
    ppo_policy_loss,
    ppo_value_loss,
)
from .preference import PREFERENCE_LOSSES, dpo_loss, sequence_logps, simpo_loss
from .shaping import adaptive_kl_coef, kl_shaped_rewards, response_scores

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_LOSS_FORMS",
    "NEEDS_VALUES",
    "aggregate_loss",
    "aggregation_count",
    "dr_grpo_advantages",
    "gae_advantages",
    "grpo_advantages",
    "kl_loss_k1",
    "kl_loss_k2",
    "kl_loss_k3",
    "kl_loss_term",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "k1_exact_z",
    "adaptive_kl_coef",
    "kl_shaped_rewards",
    "response_scores",
    "KL_ESTIMATORS",
    "bradley_terry_loss",
    "dpo_loss",
    "PREFERENCE_LOSSES",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_estimate",
    "kl_exact",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "logprobs_from_logits",
    "masked_mean",
    "masked_nll",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
    "sequence_kl",
    "sequence_logps",
    "simpo_loss",
]
