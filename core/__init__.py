"""RepLens engine: images, encoders, extraction, store and analyses. Never imports streamlit."""

__version__ = "0.1.0"
