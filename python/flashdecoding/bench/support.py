"""Which method can run which row, and why not: the reasons a peer's cell
reads "unsupported" (by design, not by failure), and the flashdecoding
arguments a row needs.

Pure Python (no torch).
"""

from __future__ import annotations

from typing import Optional

from . import stats as st

FLASHINFER_PAGE_SIZE = 16      # FlashInfer's page size on rows with a contiguous cache


def sdpa_refusal(case) -> Optional[str]:
    """Why PyTorch SDPA cannot run ``case`` (None: it can)."""
    if case.paged:
        return "SDPA reads no paged KV cache"
    if case.fp8:
        return "SDPA takes no fp8 KV cache with 16-bit queries"
    if case.ragged:
        return "SDPA takes no per-sequence lengths (a padding mask still reads every key)"
    if case.window:
        return "SDPA's flash and cuDNN decode take no sliding window"
    if case.sink_logits:
        return "SDPA has no sink logits"
    if case.soft_cap:
        return "SDPA has no logit soft-cap"
    return None


def flashinfer_refusal(case, tensor_cores: bool) -> Optional[str]:
    """Why FlashInfer's batch decode cannot run ``case`` (None: it can)."""
    if case.sink_tokens:
        return "FlashInfer has no StreamingLLM sink tokens"
    if case.sink_logits and not tensor_cores:
        return "FlashInfer's CUDA-core decode takes no sink logits"
    if tensor_cores and case.shape.D % 64:
        # Its tensor-core decode runs its prefill kernel, which accepts such a
        # head_dim: a run with FlashInfer 0.7.2 on an H200 ended with an illegal
        # address on the first head_dim-96 row, right after that kernel was
        # built for head_dim 96. A fault ends the whole process, not the row.
        return (f"FlashInfer's tensor-core decode faults on head_dim {case.shape.D} "
                "(not a multiple of 64)")
    return None


def refusal(method: str, case) -> Optional[str]:
    if method in st.SDPA_METHODS:
        return sdpa_refusal(case)
    if method in st.FLASHINFER_METHODS:
        return flashinfer_refusal(case, tensor_cores=(method == "fi-tc"))
    return None


def flashinfer_page_size(case) -> int:
    """The page size FlashInfer runs a row with: the row's own on paged rows."""
    return case.page_size or FLASHINFER_PAGE_SIZE


def flashinfer_window_left(case) -> int:
    """FlashInfer's window_left: keys [L - 1 - window_left, L - 1], i.e. W - 1; -1: none."""
    return case.window - 1 if case.window else -1


def ours_options(case, k_scale: float = 1.0, v_scale: float = 1.0) -> dict:
    """The keyword arguments of ``flashdecoding.flash_decode`` for ``case``
    besides the tensors (q, k, v, out, workspace, stream, seq_lens,
    block_table, sink_logits)."""
    opts = {}
    if case.window:
        opts["window"] = case.window
    if case.sink_tokens:
        opts["sink_tokens"] = case.sink_tokens
    if case.soft_cap:
        opts["soft_cap"] = float(case.soft_cap)
    if case.paged:
        opts["kv_layout"] = "HND"
        opts["max_seq_len"] = case.max_seq_len
    if case.fp8:
        opts["k_scale"] = float(k_scale)
        opts["v_scale"] = float(v_scale)
    return opts


def no_peer_can_run(case, results: dict) -> bool:
    """True when no peer can run ``case`` at all: each one either refuses it by
    design (:func:`refusal`) or was run and said "unsupported".  A peer that
    was not run but could have been, or that failed or is missing, leaves the
    row with a peer it was not compared with (not judged), not without one."""
    for m in st.PEERS:
        res = results.get(m)
        if res is not None and res.get("status") == "unsupported":
            continue
        if res is None and refusal(m, case):
            continue
        return False
    return True
