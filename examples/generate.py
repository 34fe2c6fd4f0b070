"""Greedy generation with flashdecoding inside a Hugging Face model, one CUDA graph per
decode step, against SDPA on the same loop.

    python examples/generate.py --steps 64
    python examples/generate.py --model /path/to/llama-checkpoint --prompt "The capital of"

By default the model is Llama-architecture with random weights (the shape of
Llama 3.2 1B: 16 layers, 32 query heads, 8 KV heads, head_dim 64), built on the GPU
from a config: nothing is downloaded. ``--model`` loads a local checkpoint instead
(``local_files_only``; its tokenizer too, when it has one and ``--prompt`` is given).

For each attention implementation (``sdpa``, then ``flashdecoding``) the loop is the
same: a static KV cache, the prompt prefilled eagerly, one decode step run eagerly
(it warms up every kernel), then that step -- forward pass, argmax, the token fed
back in -- captured once as a CUDA graph and replayed ``--steps`` times. The cache
advances on the device, so a replay needs nothing from the host. It prints decode
tokens/s and ms per step from CUDA events around the replays, and the attention time
of one step: the attention calls of every layer, recorded at the last step and
captured alone in a graph of their own, so the rest of the model is left out.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List

RECORD = "record_attention"  # an attention implementation that notes its inputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a local checkpoint directory (default: random weights)")
    p.add_argument("--prompt", help="prompt text (with --model and its tokenizer)")
    p.add_argument("--steps", type=int, default=64, help="decode steps to time (default 64)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--prompt-len", type=int, default=512,
                   help="random prompt tokens per sequence (default 512)")
    p.add_argument("--cache-len", type=int, default=None,
                   help="static cache slots (default prompt + steps + 8)")
    p.add_argument("--dtype", choices=("bf16", "f16"), default="bf16")
    p.add_argument("--layers", type=int, default=16, help="random model: decoder layers")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_model(args, torch, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                     local_files_only=True)
        return model.to("cuda").eval(), f"{args.model} ({model.config.model_type})"
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=args.layers, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, max_position_embeddings=131072)
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval(), "Llama-architecture, random weights"


def prompt_ids(args, torch, model):
    if args.prompt and args.model:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        ids = tok(args.prompt, return_tensors="pt").input_ids.to("cuda")
        return ids.expand(args.batch, -1).contiguous(), tok
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_len),
                        device="cuda", generator=g)
    return ids, None


class Recorder:
    """Notes the arguments of every attention call of one forward pass (and computes
    it with ``inner``), so the calls can be replayed on their own."""

    def __init__(self):
        self.inner = None
        self.calls: List[tuple] = []

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        self.calls.append((module, query, key, value, attention_mask, dict(kwargs)))
        return self.inner(module, query, key, value, attention_mask, **kwargs)


def time_graph(torch, graph, replays):
    """ms per replay of ``graph``, from CUDA events around ``replays`` replays."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()  # the first replay uploads the graph
    start.record()
    for _ in range(replays):
        graph.replay()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / replays


def run(args, torch, model, ids, attn, attention_fns, recorder, fd_transformers):
    """Greedy decode with ``attn``: (tokens [B, steps], ms per step, attention µs per
    step, the flashdecoding backend's call counts of the decode loop)."""
    from transformers import StaticCache

    cache_len = args.cache_len or ids.shape[1] + args.steps + 8
    model.set_attn_implementation(attn)
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    with torch.no_grad():
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)

        def step():
            out = model(input_ids=token, past_key_values=cache, use_cache=True).logits
            token.copy_(out[:, -1:].argmax(-1))

        # One step eagerly, on a side stream as torch.cuda.graph asks: every kernel's
        # first call (and any lazy setup) happens outside the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        tokens = []
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            graph.replay()
            tokens.append(token.clone())  # a device copy: no host round trip
        stop.record()
        stop.synchronize()
        ms_per_step = start.elapsed_time(stop) / args.steps
        counts = fd_transformers.stats()  # the eager step and the capture (replays run no Python)

        # One more step, eagerly, noting each layer's attention inputs.
        recorder.inner, recorder.calls = attention_fns[attn], []
        model.set_attn_implementation(RECORD)
        step()
        model.set_attn_implementation(attn)
        calls = recorder.calls
        fn = attention_fns[attn]

        def attention_only():
            for module, q, k, v, mask, kw in calls:
                fn(module, q, k, v, mask, **kw)

        attention_only()
        # Drop the block tables flashdecoding built for this mask, so the capture
        # includes building them once, as every decode step does.
        fd_transformers.reset_stats()
        attention_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(attention_graph):
            attention_only()
        attention_us = 1000 * time_graph(torch, attention_graph, 50)
    return torch.cat(tokens, 1), ms_per_step, attention_us, counts


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:
        print(f"this example needs PyTorch and Hugging Face transformers: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("this example needs a CUDA GPU (PyTorch sees none)", file=sys.stderr)
        return 2
    import flashdecoding
    from flashdecoding.integrations import transformers as fd_transformers

    fd_transformers.register()
    recorder = Recorder()
    AttentionInterface.register(RECORD, recorder)
    AttentionMaskInterface.register(RECORD, sdpa_mask)
    attention_fns = {"sdpa": sdpa_attention_forward,
                     "flashdecoding": fd_transformers.attention_forward}

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    t0 = time.perf_counter()
    model, what = build_model(args, torch, dtype)
    ids, tokenizer = prompt_ids(args, torch, model)
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    cache_len = args.cache_len or ids.shape[1] + args.steps + 8
    print(f"model: {what}, {c.num_hidden_layers} layers, H_q {c.num_attention_heads} / "
          f"H_kv {c.num_key_value_heads}, head_dim {head_dim}, {args.dtype} "
          f"(ready in {time.perf_counter() - t0:.1f} s)")
    print(f"GPU: {torch.cuda.get_device_name()}; flashdecoding {flashdecoding.__version__}, "
          f"torch {torch.__version__}")
    print(f"batch {args.batch}, prompt {ids.shape[1]} tokens, {args.steps} decode steps, "
          f"static cache of {cache_len} slots")

    results = {}
    for attn in ("sdpa", "flashdecoding"):
        fd_transformers.reset_stats()
        results[attn] = run(args, torch, model, ids, attn, attention_fns, recorder,
                            fd_transformers)
    counts = results["flashdecoding"][3]
    if counts["decode"] != 2 * c.num_hidden_layers or counts["fallback"]:
        print(f"note: not every decode call of the flashdecoding run ran flashdecoding: {counts}")

    keys = ids.shape[1] + args.steps + 2
    print()
    print(f"{'attention':<14} {'tokens/s':>10} {'ms/step':>9} {'attention µs/step':>18}"
          f"   (attention: {c.num_hidden_layers} layers at {keys} keys)")
    for attn, (_tokens, ms, att_us, _counts) in results.items():
        tps = args.batch * 1000.0 / ms
        print(f"{attn:<14} {tps:>10.1f} {ms:>9.3f} {att_us:>18.1f}")
    sdpa_tokens, fd_tokens = results["sdpa"][0], results["flashdecoding"][0]
    same = int((sdpa_tokens == fd_tokens).sum())
    print(f"\ngreedy tokens equal in both runs: {same} of {fd_tokens.numel()}"
          " (random weights give near-ties that bf16 rounding can flip)")
    first = fd_tokens[0].tolist()
    if tokenizer is not None:
        print("flashdecoding continuation:", repr(tokenizer.decode(first)))
    else:
        print("flashdecoding tokens (sequence 0):", first[:32], "..." if len(first) > 32 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
