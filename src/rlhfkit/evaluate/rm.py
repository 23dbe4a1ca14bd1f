"""Held-out reward-model metrics: accuracy, margin, loss, calibration, agreement with the gold judge."""

from __future__ import annotations

import math

import torch

from rlhfkit.data.preferences import TokenizedPairs
from rlhfkit.models.prefix import SharedPrompts
from rlhfkit.models.reward import shared_prompt_rewards
from rlhfkit.ops import bradley_terry_loss
from rlhfkit.run import metrics as M


@torch.no_grad()
def score_pairs(
    model, pairs: TokenizedPairs, pad_token_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards (N,), rejected rewards (N,)), one batch for both, each pair's prompt run once."""
    chosen, rejected = [], []
    for start in range(0, len(pairs.chosen_ids), batch_size):
        ids = list(range(start, min(start + batch_size, len(pairs.chosen_ids))))
        rewards = shared_prompt_rewards(model, SharedPrompts.split(*pairs.pair_rows(ids), pad_token_id))
        half = rewards.shape[0] // 2
        chosen.append(rewards[:half])
        rejected.append(rewards[half:])
    return torch.cat(chosen), torch.cat(rejected)


def calibration(probabilities: torch.Tensor, bins: int = 5) -> list[dict]:
    """Calibration table of held-out pairs from p = P(chosen > rejected); the label is always "chosen".

    Each pair is binned by its confidence max(p, 1 - p) in [0.5, 1] and counts as correct when the
    side it predicts is the chosen one (p > 0.5); at p = 0.5 the predicted side is a coin flip, so it
    counts half. A calibrated RM has accuracy ~ confidence in every bin; reading accuracy off p alone
    would score a model that ranks every pair backwards as well as a perfect one.
    Rows: bin (confidence range), n, confidence (mean), accuracy (mean).
    """
    confidence = torch.maximum(probabilities, 1 - probabilities)
    correct = (probabilities > 0.5).float() + 0.5 * (probabilities == 0.5).float()
    table = []
    edges = torch.linspace(0.5, 1.0, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence >= lo) & ((confidence < hi) | (hi == 1.0))
        if inside.any():
            table.append(
                {
                    "bin": f"{lo:.1f}-{hi:.1f}",
                    "n": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return table


def expected_calibration_error(table: list[dict]) -> float:
    """ECE: the pair-weighted mean gap between confidence and accuracy over the bins of `calibration`."""
    pairs = sum(b["n"] for b in table)
    if not pairs:
        return float("nan")
    return sum(b["n"] * abs(b["confidence"] - b["accuracy"]) for b in table) / pairs


def rm_metrics(
    model, pairs: TokenizedPairs, rows: list[dict], pad_token_id: int, batch_size: int
) -> tuple[dict, list]:
    was_training = model.training
    model.eval()
    chosen, rejected = score_pairs(model, pairs, pad_token_id, batch_size)
    model.train(was_training)
    loss, stats = bradley_terry_loss(chosen, rejected)
    metrics = {
        M.RM_LOSS: loss.item(),
        M.RM_ACCURACY: stats["accuracy"].item(),
        M.RM_MARGIN: stats["margin"].item(),
    }
    table = calibration(torch.sigmoid(chosen - rejected))
    metrics[M.RM_ECE] = expected_calibration_error(table)
    families = [r.get("family") for r in rows]
    if all(families):
        # A tiny RM can be near the ceiling on some families and at chance on others (design §5).
        correct = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
        for family in sorted(set(families)):
            picked = torch.tensor([f == family for f in families])
            metrics[f"{M.RM_ACCURACY}/{family}"] = correct[picked].mean().item()
    gold = [(r.get("chosen_score"), r.get("rejected_score")) for r in rows]
    if all(g[0] is not None and g[1] is not None for g in gold):
        gold_c = torch.tensor([g[0] for g in gold], dtype=torch.float32)
        gold_r = torch.tensor([g[1] for g in gold], dtype=torch.float32)
        agree, untied = gold_order_agreement(chosen - rejected, gold_c - gold_r)
        if untied.any():  # agreement with the noiseless judge, gold ties left out
            metrics[M.RM_GOLD_AGREEMENT] = agree[untied].mean().item()
        rm_scores, gold_scores = torch.cat([chosen, rejected]), torch.cat([gold_c, gold_r])
        metrics[M.RM_GOLD_CORRELATION] = pearson(rm_scores, gold_scores)
        metrics[M.RM_GOLD_PAIR_CORRELATION] = pair_correlation(chosen - rejected, gold_c - gold_r)
    return metrics, table


def gold_order_agreement(rm_diff: torch.Tensor, gold_diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair from score differences: 1 where the RM orders it as the gold judge does, 0 where it
    reverses it, 0.5 for an RM tie (a coin flip); and which pairs count (gold does not tie them)."""
    return 0.5 * (1 + rm_diff.sign() * gold_diff.sign()), gold_diff != 0


def pair_correlation(rm_differences: torch.Tensor, gold_differences: torch.Tensor) -> float:
    """Uncentred correlation of per-pair differences: swapping a pair's chosen and rejected flips
    both signs and leaves it unchanged, so only the RM's ranking within each prompt counts."""
    x, y = rm_differences.double(), gold_differences.double()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")
