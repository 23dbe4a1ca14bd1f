"""Greedy completions of held-out prompts, scored: gold judge, BLEU, EOS rate, length."""

from __future__ import annotations

from rlhfkit.data import prompt_and_completion
from rlhfkit.evaluate.text import bleu
from rlhfkit.rollout import generate
from rlhfkit.run import metrics as M
from rlhfkit.tasks import gold_score


def prompts_and_references(
    rows: list[dict], source: str, template: str, tokenizer
) -> tuple[list[str], list[list[str]]]:
    """Rendered prompts and their reference answers (all wordings where the row has several)."""

    prompts, references = [], []
    for i, row in enumerate(rows):
        prompt, completion = prompt_and_completion(row, f"{source}: row {i}", template, tokenizer)
        prompts.append(prompt)
        references.append(row.get("references") or [completion.strip()])
    return prompts, references


def completion_metrics(
    model,
    tokenizer,
    prompts: list[str],
    references: list[list[str]],
    max_new_tokens: int,
    gold: bool,
    batch_size: int = 16,
) -> tuple[dict[str, float], list[dict]]:
    """(metrics, samples) of greedy completions; gold/score_greedy only where the prompts are built-in."""
    completions = generate(model, tokenizer, prompts, max_new_tokens, greedy=True, batch_size=batch_size)
    metrics = {
        M.EVAL_BLEU: bleu(completions.texts, references),
        M.EVAL_EOS_RATE: sum(completions.finished) / len(prompts),
        M.EVAL_RESPONSE_LEN: sum(len(t) for t in completions.token_ids) / len(prompts),
    }
    samples = [
        {"prompt": p, "response": r, "finished": f, "reference": refs[0]}
        for p, r, f, refs in zip(prompts, completions.texts, completions.finished, references)
    ]
    if gold:
        scores = [
            gold_score(p, r, finished=f) for p, r, f in zip(prompts, completions.texts, completions.finished)
        ]
        metrics[M.GOLD_SCORE_GREEDY] = sum(scores) / len(scores)
        for sample, score in zip(samples, scores):
            sample["gold"] = score
    return metrics, samples
