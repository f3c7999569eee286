"""compactnn: compact neural networks by structure.

Low-rank (factorized) layers with spectral and function-matching
initialization, Frobenius decay, model surgery, and DSelect-k mixtures of
experts. See the README and docs/ for usage.
"""

__version__ = "0.1.0"
