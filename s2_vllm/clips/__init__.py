"""Step 1's clips, whatever their modality: which clips a run reads (`listing.py`), what a modality is
(`modality.py`: the one seam the rest of the package sees), and decoding ahead of the engine on a bounded
pool of workers (`feed.py`). The modalities themselves live in `s2_vllm.audio` and `s2_vllm.video`."""
