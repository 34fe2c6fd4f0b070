"""flashdecoding as a Hugging Face transformers attention implementation.

Importing this module registers the implementation ``"flashdecoding"`` when
transformers is importable (``register()`` does it explicitly, and raises
ImportError saying what is missing otherwise)::

    import flashdecoding.integrations.transformers  # registers "flashdecoding"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="flashdecoding")
    # or: model.set_attn_implementation("flashdecoding")

Every decode step (one query token) runs flashdecoding through the torch op
``torch.ops.flashdecoding.decode``; prefill (several query tokens) runs SDPA, or an
eager softmax in f32 when the layer has a logit soft-cap or sink logits, which SDPA
cannot apply. The layer's ``scaling``, ``softcap`` (Gemma 2's attn_logit_softcapping),
``sliding_window`` and ``s_aux`` (gpt-oss sink logits) are honoured, GQA comes from
the tensors' head counts, and the attention mask decides which cache slots each
sequence attends: left padding, the unfilled tail of a static cache and the slots of
a sliding-window cache (in any order) are all exact, with nothing read back to the
host, so a decode step can be compiled or captured in a CUDA graph. A decode step
flashdecoding cannot run (CPU tensors, f32, dropout in training, a float or per-head
mask, a position bias, head_dim > 256) runs the prefill path instead and is counted.

``stats()`` counts what ran (Python calls: replays of a captured graph do not run
Python and are not counted).
"""
from __future__ import annotations

import collections
import threading
from typing import Optional

NAME = "flashdecoding"

_MISSING = ("flashdecoding.integrations.transformers needs PyTorch and Hugging Face "
            "transformers >= 5 (pip install torch transformers): {}")

_lock = threading.Lock()
_registered_names = set()
_counts = collections.Counter()


def _transformers():
    """transformers' AttentionInterface and AttentionMaskInterface, and sdpa_mask."""
    try:
        import torch  # noqa: F401
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:
        raise ImportError(_MISSING.format(exc)) from exc
    return AttentionInterface, AttentionMaskInterface, sdpa_mask


def register(name: str = NAME) -> str:
    """Registers flashdecoding under ``name`` with transformers' AttentionInterface (and
    SDPA's mask function under the same name, so the model builds the masks SDPA
    gets) and returns ``name``. Registering again is harmless.

    transformers treats an implementation name containing "flash" as a
    flash-attention kernel to preload when a model is built; the preload is skipped
    for the names registered here. A model that lists its own flash-attention
    kernels (gpt-oss) swaps such a name for one of them: register another name for
    it, e.g. ``register("fd_decode")``.
    """
    AttentionInterface, AttentionMaskInterface, sdpa_mask = _transformers()
    from . import torch as _torch_ops  # noqa: F401  (registers torch.ops.flashdecoding)

    with _lock:
        AttentionInterface.register(name, attention_forward)
        AttentionMaskInterface.register(name, sdpa_mask)
        _registered_names.add(name)
        _skip_flash_preload()
    return name


def registered_names():
    """The names this module has registered."""
    return frozenset(_registered_names)


def _skip_flash_preload() -> None:
    """Wraps transformers' flash-attention preload so it passes over the names
    registered here (it would try to fetch them as kernels from the hub)."""
    try:
        from transformers import modeling_utils
    except ImportError:
        return
    original = getattr(modeling_utils, "lazy_import_flash_attention", None)
    if original is None or getattr(original, "_flashdecoding_skips", False):
        return

    def lazy_import_flash_attention(implementation, *args, **kwargs):
        if implementation in _registered_names:
            return None
        return original(implementation, *args, **kwargs)

    lazy_import_flash_attention._flashdecoding_skips = True
    lazy_import_flash_attention.__wrapped__ = original
    modeling_utils.lazy_import_flash_attention = lazy_import_flash_attention


# ---------------------------------------------------------------------- statistics

def stats() -> dict:
    """Counts of attention calls since the last reset: ``decode`` (flashdecoding ran),
    ``prefill`` (SDPA or eager ran for several query tokens), ``fallback`` (a decode
    step ran the prefill path), and ``fallback:<reason>`` per reason."""
    out = {"decode": 0, "prefill": 0, "fallback": 0}
    out.update(_counts)
    return out


def reset_stats() -> None:
    """Zeroes the counts (and drops the cached block tables)."""
    _counts.clear()
    if _memo is not None:
        _memo.clear()


def _count(what: str) -> None:
    import torch

    if not torch.compiler.is_compiling():  # a traced counter would count once
        _counts[what] += 1


# ---------------------------------------------------------------------- the attention function

def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                      softcap: Optional[float] = None, **kwargs):
    """transformers' attention interface: query [B, H_q, q_len, D], key and value
    [B, H_kv, S, D] (the whole cache), ``attention_mask`` a 4D boolean mask or None.
    Returns (attn_output [B, q_len, H_q, D], None)."""
    s_aux = kwargs.pop("s_aux", None)
    if query.shape[2] == 1:
        step = _decode_step(module, query, key, value, attention_mask, dropout, kwargs)
        if not isinstance(step, str):
            _count("decode")
            return _decode(query, key, value, step, scaling, sliding_window, softcap,
                           s_aux), None
        _count("fallback")
        _count(f"fallback:{step}")
    else:
        _count("prefill")
    return _prefill(module, query, key, value, attention_mask, dropout, scaling, softcap,
                    s_aux, kwargs)


_FLASHDECODING_MAX_HEAD_DIM = 256  # FD_FLASH_DECODING_MAX_HEAD_DIM
_DEVICE_TYPES = ("cuda",)  # where the decode op runs
_DTYPE_NAMES = ("float16", "bfloat16")  # the query and cache types it runs


def _ops():
    """The op namespace the decode steps call (a function, so the glue can be tested
    against another implementation of the same ops)."""
    import torch

    return torch.ops.flashdecoding


def _decode_step(module, query, key, value, mask, dropout, kwargs):
    """What flashdecoding needs for this decode step -- None (no mask: every slot) or
    (attended slots [B, S], mask, K pool, V pool, pages per sequence) -- or, as a
    str, the reason it cannot run it. Reads only what the host knows: devices,
    dtypes, shapes and strides."""
    import torch

    from ._mask_keys import attended_slots, one_key_pages

    if query.device.type not in _DEVICE_TYPES or key.device != query.device \
            or value.device != query.device:
        return "device"
    if query.dtype not in tuple(getattr(torch, n) for n in _DTYPE_NAMES) \
            or key.dtype != query.dtype or value.dtype != query.dtype:
        return "dtype"
    d = query.shape[-1]
    if key.shape[-1] != d or value.shape[-1] != d or d > _FLASHDECODING_MAX_HEAD_DIM:
        return "head_dim"
    if key.shape[1] == 0 or query.shape[1] % key.shape[1] or key.shape[:3] != value.shape[:3]:
        return "heads"
    if dropout and getattr(module, "training", False):
        return "dropout"
    if kwargs.get("position_bias") is not None:
        return "position_bias"
    if mask is None:
        return None
    attended = attended_slots(mask, query.shape[0], key.shape[2])
    if attended is None:
        return "mask"
    k_pages, v_pages = one_key_pages(key), one_key_pages(value)
    if k_pages is None or v_pages is None or k_pages[1] != v_pages[1]:
        return "cache_strides"
    return attended, mask, k_pages[0], v_pages[0], k_pages[1]


_memo = None  # the TableMemo of eager and captured steps (made on first use: it needs torch)


def _lengths_and_table(mask, attended, pages_per_seq):
    global _memo
    import torch

    from ._mask_keys import TableMemo, lengths_and_table

    if torch.compiler.is_compiling():  # traced once into the graph; no Python-side cache
        return lengths_and_table(attended, pages_per_seq)
    if _memo is None:
        _memo = TableMemo()
    return _memo.get(mask, attended, pages_per_seq)


def _decode(query, key, value, step, scaling, sliding_window, softcap, s_aux):
    ops = _ops()
    q = query[:, :, 0, :]  # [B, H_q, D]
    options = dict(scale=scaling, soft_cap=float(softcap) if softcap else None,
                   sink_logits=None if s_aux is None else s_aux.float().contiguous())
    if step is None:
        # transformers drops the mask when every slot is attended; a window still
        # applies when the cache holds more than it (a full cache of a sliding layer).
        window = int(sliding_window) if sliding_window and key.shape[2] > sliding_window else None
        y = ops.decode(q, key, value, window=window, **options)
    else:
        # The mask already holds the window, the padding and the unfilled slots.
        attended, mask, k_pool, v_pool, per_seq = step
        seq_lens, table = _lengths_and_table(mask, attended, per_seq)
        y = ops.decode(q, k_pool, v_pool, seq_lens=seq_lens, block_table=table,
                       kv_layout="HND", max_seq_len=int(key.shape[2]), **options)
    return y.unsqueeze(1)  # [B, 1, H_q, D]


# ---------------------------------------------------------------------- prefill

def _prefill(module, query, key, value, mask, dropout, scaling, softcap, s_aux, kwargs):
    if softcap or s_aux is not None:
        return _eager(module, query, key, value, mask, dropout, scaling, softcap, s_aux,
                      kwargs.get("is_causal")), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def _eager(module, query, key, value, mask, dropout, scaling, softcap, s_aux, is_causal):
    """Attention with the softmax in f32, soft-cap and sink logits applied: what the
    models' own eager code computes, for the layers SDPA cannot serve."""
    import torch

    b, hq, q_len, d = query.shape
    groups = hq // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if mask is None and is_causal and q_len > 1 and key.shape[2] > q_len:
        # As SDPA does: without a mask the keys past the queries are empty cache slots.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    scale = d ** -0.5 if scaling is None else scaling
    logits = torch.matmul(query, key.transpose(2, 3)) * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    lowest = torch.finfo(logits.dtype).min
    if mask is not None:
        mask = mask[..., : key.shape[2]]
        logits = logits.masked_fill(~mask, lowest) if mask.dtype == torch.bool else logits + mask
    elif is_causal and q_len > 1:
        causal = torch.ones(q_len, key.shape[2], dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~causal, lowest)
    if s_aux is not None:
        sinks = s_aux.reshape(1, -1, 1, 1).to(logits.dtype).expand(b, -1, q_len, 1)
        combined = torch.cat([logits, sinks], dim=-1)
        probs = torch.softmax(combined.float(), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(logits.float(), dim=-1)
    probs = torch.nn.functional.dropout(probs.to(value.dtype), p=dropout,
                                        training=getattr(module, "training", False))
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def _register_if_available() -> None:
    try:
        _transformers()
    except ImportError:
        return  # register() says what is missing when it is called
    register()


_register_if_available()
