"""Text metrics of generated completions: BLEU against references, gold score, EOS rate."""

from __future__ import annotations


def bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) with any number of references per hypothesis."""
    import sacrebleu

    width = max(len(refs) for refs in references)
    # sacrebleu wants equally many reference streams; repeating a reference changes no n-gram max.
    streams = [[refs[min(i, len(refs) - 1)] for refs in references] for i in range(width)]
    return sacrebleu.corpus_bleu(hypotheses, streams).score
