"""Named starting points for the app's training form: changes from Config's defaults."""

from .config import Config

PRESETS = {
    # FOMAML with a conv net of 32 channels and a 5x larger outer learning rate than the paper's. Measured on a
    # 2-core CPU, one torch thread as the app runs it: validation accuracy 80 % after 1 min, 85 % after 2 min,
    # 90 % at iteration 1420 after 6 min (test accuracy then 88.0 +- 0.7 %, 600 tasks). Accuracy grew with the
    # number of tasks seen, about alike for meta-batches of 8, 16 and 32; 16 draws smooth curves quickly.
    "quick class demo": dict(algorithm="fomaml", channels=32, blocks=4, meta_batch=16, outer_lr=0.005,
                             iterations=1500, val_every=20, checkpoint_every=100, test_tasks=200),
    # Finn et al. (2017), Omniglot 5-way 1-shot: conv 64x4, one inner step with alpha 0.4, 32 tasks per
    # meta-update, Adam 0.001, 60000 iterations, on the paper's 1200/423 character split.
    "MAML paper 5-way 1-shot": dict(algorithm="maml", backbone="conv", channels=64, blocks=4, ways=5, shots=1,
                                    inner_steps=1, inner_lr=0.4, meta_batch=32, outer_lr=0.001,
                                    iterations=60000, split="maml-paper", val_every=100, checkpoint_every=500),
}


def preset(name: str, **overrides) -> Config:
    """The preset's Config; `overrides` (data_root, say) change further fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config(**{**PRESETS[name], **overrides})
