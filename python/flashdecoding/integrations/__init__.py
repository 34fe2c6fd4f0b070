"""flashdecoding inside frameworks. Nothing here is imported by ``import flashdecoding``;
each integration is imported on purpose and needs its framework:

* ``flashdecoding.integrations.torch`` (needs PyTorch): the custom ops
  ``torch.ops.flashdecoding.decode`` / ``decode_lse`` / ``decode_out`` /
  ``decode_out_lse``, which
  ``torch.compile(fullgraph=True)`` traces through and ``torch.cuda.graph`` captures;
  importing the module registers them.
* ``flashdecoding.integrations.transformers`` (needs PyTorch and Hugging Face
  transformers): the ``"flashdecoding"`` attention implementation, flashdecoding for
  every decode step (one query token) and SDPA for prefill; importing the module
  registers it when transformers is importable.
"""
