"""fewshot: MAML and first-order MAML on Omniglot, as a small library for teaching meta-learning."""

__version__ = "0.1.0"
