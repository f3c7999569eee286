"""``python -m compactnn.lm``: load SmolLM2 and state what docs/transformers.md states:
load time, parameter count, the greedy "Paris" check, tokens per corpus split, and the
dense perplexity on the held-out Shakespeare test plays and on the KJV.

    nice -n 10 python -m compactnn.lm [--max-tokens 32768] [--seq-len 256] [--threads 1]
                                      [--per-play] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from compactnn.utils import machine_info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m compactnn.lm",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=32768,
                    help="evaluate on this prefix of each set (0: the whole set)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-play", action="store_true",
                    help="also the whole test split, play by play (about an hour at 1 thread)")
    ap.add_argument("--cache-dir", default=None,
                    help="keep a float copy of the model here for fast later loads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from compactnn.lm import (
        SHAKESPEARE_SPLIT,
        kjv_text,
        load_smollm2,
        perplexity,
        perplexity_windows,
        shakespeare_text,
        shakespeare_works,
        smollm2_path,
        token_ids,
    )

    print(machine_info())
    print(f"model file: {smollm2_path()}")
    t0 = time.perf_counter()
    model, tok = load_smollm2(cache_dir=args.cache_dir)
    print(f"load: {time.perf_counter() - t0:.1f} s; {type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    prompt = "The capital of France is"
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    out = model.generate(ids, max_new_tokens=8, do_sample=False,
                         attention_mask=torch.ones_like(ids))
    print(f"greedy: {prompt!r} -> {tok.decode(out[0, ids.shape[1]:])!r}")

    sets = {f"shakespeare {s}": shakespeare_text(s) for s in SHAKESPEARE_SPLIT}
    sets["kjv"] = kjv_text()
    tokens = {}
    for name, text in sets.items():
        tokens[name] = token_ids(tok, text)
        print(f"{name}: {len(text):,} characters, {tokens[name].numel():,} tokens")
    limit = args.max_tokens or None
    for name in ("shakespeare test", "kjv"):
        ids = tokens[name]
        n = ids.numel() if limit is None else min(limit, ids.numel())
        t0 = time.perf_counter()
        ppl = perplexity(model, ids, seq_len=args.seq_len, batch_size=args.batch_size,
                         max_tokens=n)
        print(f"perplexity {name}: {ppl:.3f} (first {n:,} tokens, seq_len {args.seq_len}, "
              f"non-overlapping windows; {time.perf_counter() - t0:.0f} s)", flush=True)
    if not args.per_play:
        return
    works, log_sum, scored = shakespeare_works(), 0.0, 0
    for title in SHAKESPEARE_SPLIT["test"]:
        ids = token_ids(tok, works[title])
        ppl = perplexity(model, ids, seq_len=args.seq_len, batch_size=args.batch_size)
        n = sum(e - f for _, e, f in perplexity_windows(ids.numel(), args.seq_len,
                                                          args.seq_len))
        log_sum, scored = log_sum + math.log(ppl) * n, scored + n
        print(f"perplexity {title}: {ppl:.3f} ({ids.numel():,} tokens)", flush=True)
    print(f"perplexity of the test plays together: {math.exp(log_sum / scored):.3f} "
          f"({scored:,} scored tokens)")


if __name__ == "__main__":
    main()
