"""Small built-in models used to exercise the NeuralMatrix toolflow.

Submodules
----------
digits
    The scikit-learn 8x8 digits data set and the committed CNN trained on it.
train_digits
    The script (needs PyTorch) that trains and exports that CNN.
"""

__all__: list[str] = []
