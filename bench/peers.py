"""PRIP's peers on the same CPU, for bench/run.sh (issue 14). Not part of CI.

Each peer runs in a child process of this script (so its peak memory is its own) and is
measured the way `cargo bench -p prip-core --bench refine` measures PRIP: greedy, the
same prompts in PRIP's decoder template with eight stand-in tokens where PRIP puts the
pivot, 40 new tokens (EOS suppressed), the same thread count.

Peers: llama.cpp (llama-cpp-python) on the very GGUF PRIP ships; Hugging Face
transformers on PyTorch CPU reading that GGUF (bf16); and a GPT-2 124M expander shape
(Fooocus/MagicPrompt style, random weights, fp32) in transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

# The same prompts as `cargo bench -p prip-core --bench refine`.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.txt")) as _f:
    PROMPTS = [line.strip() for line in _f if line.strip()]
NEW_TOKENS = 40
PEERS = ["llama.cpp", "transformers", "gpt2 expander"]


def row(prompt: str) -> str:
    # PRIP's template; "x" x 8 stands where the pivot's 8 embeddings go.
    return "<pivot>" + " x" * 8 + f" </pivot> Prompt: {prompt},"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentile(xs: list[float], p: float) -> float:
    v = sorted(xs)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def timed(f: Callable[[], Any]) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1e3


def llama_cpp(gguf: str, threads: int) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=gguf,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=4096,
        n_batch=512,
        verbose=False,
    )
    load_ms = (time.perf_counter() - t) * 1e3
    eos = llm.token_eos()

    def complete(prompt: str, n: int) -> None:
        llm.reset()
        llm.create_completion(
            prompt, max_tokens=n, temperature=0.0, logit_bias={eos: -1e9}
        )

    complete(PROMPTS[0], 4)
    prefill, full, positions = [], [], []
    for i in range(10):
        p = row(PROMPTS[i % len(PROMPTS)])
        positions.append(len(llm.tokenize(p.encode(), add_bos=False)))
        prefill.append(timed(lambda: complete(p, 1)))
        full.append(timed(lambda: complete(p, NEW_TOKENS)))
    decode = (NEW_TOKENS - 1) / ((statistics.median(full) - statistics.median(prefill)) / 1e3)
    out: dict[str, Any] = {
        "load_ms": load_ms,
        "prefill_tokens_per_s": statistics.median(positions) / statistics.median(prefill) * 1e3,
        "decode_tokens_per_s": {"1": decode},
        "refine_ms": {"warm_p50": percentile(full, 50), "warm_p95": percentile(full, 95)},
        "peak_rss_mb": {"1": peak_rss_mb()},
    }
    # Several sequences in one llama_batch, as llama.cpp's batched examples decode them,
    # on a context of the same model made for 32 sequences (Llama() makes one).
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 8192, 2048, 512, 32
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    vocab = llm.n_vocab()
    for n in (8, 32):
        prompts = [llm.tokenize(row(PROMPTS[i % len(PROMPTS)]).encode(), add_bos=False) for i in range(n)]
        total = sum(len(p) for p in prompts) + n * NEW_TOKENS
        batch = llama_cpp.llama_batch_init(max(total, 512), 0, n)
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(mem, True)

        def fill(items: list[tuple[int, int, int, bool]]) -> None:
            batch.n_tokens = len(items)
            for j, (tok, pos, seq, logits) in enumerate(items):
                batch.token[j] = tok
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = logits

        items = []
        for s, p in enumerate(prompts):
            items += [(tok, k, s, k == len(p) - 1) for k, tok in enumerate(p)]
        fill(items)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on the prefill")
        last = list(np.cumsum([len(p) for p in prompts]) - 1)
        pos = [len(p) for p in prompts]
        t = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            step = []
            for s in range(n):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, int(last[s])), shape=(vocab,))
                logits[eos] = -1e9
                step.append((int(np.argmax(logits)), pos[s], s, True))
                pos[s] += 1
            fill(step)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            last = list(range(n))
        out["decode_tokens_per_s"][str(n)] = n * (NEW_TOKENS - 1) / (time.perf_counter() - t)
        out["peak_rss_mb"][str(n)] = peak_rss_mb()
        llama_cpp.llama_batch_free(batch)
    return out


def transformers_peer(model: Any, tokenizer: Any, load_ms: float, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def generate(prompts: list[str], n: int) -> None:
        enc = tokenizer([row(p) for p in prompts], return_tensors="pt", padding=True)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)

    generate(PROMPTS[:1], 4)
    prefill, full, positions = [], [], []
    for i in range(10):
        p = [PROMPTS[i % len(PROMPTS)]]
        positions.append(len(tokenizer(row(p[0]))["input_ids"]))
        prefill.append(timed(lambda: generate(p, 1)))
        full.append(timed(lambda: generate(p, NEW_TOKENS)))
    out: dict[str, Any] = {
        "load_ms": load_ms,
        "prefill_tokens_per_s": statistics.median(positions) / statistics.median(prefill) * 1e3,
        "decode_tokens_per_s": {
            "1": (NEW_TOKENS - 1) / ((statistics.median(full) - statistics.median(prefill)) / 1e3)
        },
        "refine_ms": {"warm_p50": percentile(full, 50), "warm_p95": percentile(full, 95)},
        "peak_rss_mb": {"1": peak_rss_mb()},
    }
    for n in (8, 32):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        t1 = timed(lambda: generate(prompts, 1))
        tn = timed(lambda: generate(prompts, NEW_TOKENS))
        out["decode_tokens_per_s"][str(n)] = n * (NEW_TOKENS - 1) / ((tn - t1) / 1e3)
        out["peak_rss_mb"][str(n)] = peak_rss_mb()
    return out


def smollm2_transformers(gguf: str, threads: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(gguf)
    t = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.bfloat16).eval()
    return transformers_peer(model, tokenizer, (time.perf_counter() - t) * 1e3, threads)


def gpt2_expander(gguf: str, threads: int) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    d, f = os.path.split(gguf)
    t = time.perf_counter()
    torch.manual_seed(0)
    # GPT-2 124M's shape with random weights: speed does not depend on the values. The
    # SmolLM2 tokenizer stands in for GPT-2's (same byte-level BPE family; its 49k vocab
    # is close to GPT-2's 50k).
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer))).eval()
    return transformers_peer(model, tokenizer, (time.perf_counter() - t) * 1e3, threads)


RUN = {"llama.cpp": llama_cpp, "transformers": smollm2_transformers, "gpt2 expander": gpt2_expander}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out")
    ap.add_argument("--peer", choices=PEERS, help="measure one peer (child mode)")
    args = ap.parse_args()
    if args.peer:
        print(json.dumps(RUN[args.peer](args.gguf, args.threads)))
        return
    peers: dict[str, Any] = {}
    for name in PEERS:
        print(f"peers: {name}", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, __file__, "--gguf", args.gguf, "--threads", str(args.threads), "--peer", name],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            print(f"peers: {name} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        peers[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {"threads": args.threads, "new_tokens": NEW_TOKENS, "peers": peers}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
