"""Named starting points for the app's training form: changes from Config's defaults."""

from .config import Config

PRESETS = {
    # The quick class demo, cut short: over in about 2 minutes, test accuracy included (see README's presets).
    "2-minute demo": dict(algorithm="fomaml", channels=32, blocks=4, meta_batch=16, outer_lr=0.005,
                          iterations=300, val_every=20, checkpoint_every=100, test_tasks=100),
    # FOMAML with a conv net of 32 channels and a 5x larger outer learning rate than the paper's. Accuracy grew
    # with the number of tasks seen, about alike for meta-batches of 8, 16 and 32; 16 draws smooth curves quickly.
    "quick class demo": dict(algorithm="fomaml", channels=32, blocks=4, meta_batch=16, outer_lr=0.005,
                             iterations=1500, val_every=20, checkpoint_every=100, test_tasks=200),
    # Finn et al. (2017), Omniglot 5-way 1-shot: conv 64x4, one inner step with alpha 0.4, 32 tasks per
    # meta-update, Adam 0.001, 60000 iterations, on the paper's 1200/423 character split.
    "MAML paper 5-way 1-shot": dict(algorithm="maml", backbone="conv", channels=64, blocks=4, ways=5, shots=1,
                                    inner_steps=1, inner_lr=0.4, meta_batch=32, outer_lr=0.001,
                                    iterations=60000, split="maml-paper", val_every=100, checkpoint_every=500),
    # The original notebook's settings, with its loop (learn2learn's MAML, clone() and adapt(), task by task):
    # 5-way 5-shot, conv 128x3, inner learning rate 0.1, Adam 0.01, 32 tasks per meta-update.
    "original notebook": dict(algorithm="maml", backbone="conv", channels=128, blocks=3, ways=5, shots=5,
                              inner_steps=1, inner_lr=0.1, meta_batch=32, outer_lr=0.01, engine="learn2learn",
                              iterations=1000, val_every=25, checkpoint_every=50),
}


# What each preset costs, measured on the 2-core machine the app was written on, one torch thread as the app runs
# a run (runs.start), other work on the machine (load 8 to 10): wall time from Start, loading included (issue 16).
# The long ones were timed over a few meta-updates only.
ABOUT = {
    "2-minute demo": "Measured: validation accuracy 80 % after 1.7 min; finished, test accuracy included "
                     "(81 ± 2 % on 100 tasks), after 2.1 min.",
    "quick class demo": "Measured: validation accuracy 80 % after 1.8 min, 85 % after 3.3 min; finished, test "
                        "accuracy included (89.0 ± 1.2 % on 200 tasks), after 5.8 min.",
    "MAML paper 5-way 1-shot": "Measured: about 1.0 s a meta-update here, so 60,000 take about 17 hours (not run "
                               "to the end here); the paper reports 98.7 % test accuracy.",
    "original notebook": "Measured: 4.7 to 9.1 s a meta-update here (the notebook's loop, 128 channels, 5 shots), "
                         "so 1,000 take 1.5 to 2.5 hours (not run to the end here).",
}


def preset(name: str, **overrides) -> Config:
    """The preset's Config; `overrides` (data_root, say) change further fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config(**{**PRESETS[name], **overrides})
