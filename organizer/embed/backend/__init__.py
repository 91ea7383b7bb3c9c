"""open_clip's towers exported to ONNX and run without torch, in ONNX Runtime or OpenVINO:
each concern in its own module, below the embedder that uses them
(:class:`organizer.embed.onnx.OnnxEmbedder`).

- :mod:`.cache`: the model cache (its root, a model's folder, its lock, atomic writes,
  failure markers).
- :mod:`.tokenizer`: open_clip's tokenizer rebuilt without torch.
- :mod:`.engines`: a tower file opened, checked and run by ONNX Runtime or OpenVINO.
- :mod:`.export`: a tower exported from the torch model (or quantised), checked, kept.
- :mod:`.towers`: an embedder's towers, found in the cache or made, with their fallbacks.

Each tower is exported once per model and machine, run on a probe beside torch and kept only
if it gives torch's vectors; the probe runs again each time the file is opened, so a damaged
or stale file is exported again instead of giving wrong vectors. A model that does not
export falls back to torch.
"""
