"""Step 1's audio side: one clip to samples (`decode.py`), the modality `describe --modality audio` runs
(`modality.py`), and generated tone clips for the demo and tests (`synth.py`)."""
