"""r2: R²-Tuning (ECCV 2024) on frozen CLIP features: extraction, training, evaluation and prediction.

`r2.Predictor(checkpoint).predict(video, queries)` runs a trained checkpoint on any video file (see r2.predict).
Submodules are imported on first use, so `import r2` stays cheap.
"""
__version__ = "0.3.0"
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":
        from r2.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'r2' has no attribute {name!r}")
