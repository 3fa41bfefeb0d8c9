"""Step 1's video side: one clip to sampled, resized frames (`decode.py`), the modality `describe --modality
video` runs (`modality.py`), and generated clips of moving shapes for the demo and tests (`synth.py`)."""
