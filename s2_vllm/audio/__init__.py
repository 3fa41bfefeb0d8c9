"""Step 1's audio side: which clips (`clips.py`), one clip to samples (`decode.py`), decoding ahead of the
engine on a bounded pool (`feed.py`), and generated tone clips for the demo and tests (`synth.py`)."""
