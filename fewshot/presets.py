"""Named starting points for the app's training form: changes from Config's defaults."""

from .config import Config

PRESETS = {
    # Tuned on validation (never on test) with scripts/time_to_accuracy.py, one torch thread at nice 10 as the app
    # runs a run, the machine otherwise idle (load average under 1). MAML with MAML++'s learned inner learning
    # rates (the largest gain: FOMAML reached 0.87 after 400 meta-updates with them, 0.83 without), and Adam's
    # 0.01 cosine-annealed to the run's end (a constant 0.005 or 0.01 stalled at 0.85 to 0.89); 3 queries per class
    # (0.12 s a meta-update against 0.15 with 5, for the same curve), and one test-time step (3 scored the same).
    # Measured curve (200 validation tasks; wall seconds from Start), 8 tasks adapted at once: 0.82 at 20 s, 0.85
    # at 31 s, 0.90 at 66 s, 0.906 at 84 s, the end (700 meta-updates); the checkpoint there scored 90.56 +- 0.52 %
    # and 90.83 +- 0.50 % on two sets of 1000 validation tasks (seeds 0 and 1). (All 16 at once, another day's
    # machine: 0.896 at 85.5 s; 90.23 +- 0.52 % and 90.20 +- 0.51 %.) Tried and dropped: 16 channels (stalls at
    # 0.83), 48 or 64 (better per meta-update, 1.5 to 2.5 times slower), meta-batches of 8 or 32, 1 query, 2 inner
    # steps, all 16 tasks at once (0.105 s/update, not 0.116, but 89.70 +- 0.55 % and 89.81 +- 0.52 % at its end,
    # 76.5 s), which the automatic group would be at 32 channels: both presets keep the 8 they were measured with.
    # No first- vs second-order probe: it would cost a validation's time.
    "90-second class demo": dict(algorithm="maml", channels=32, blocks=4, queries=3, meta_batch=16, outer_lr=0.01,
                                 learned_inner_lr=True, cosine_annealing=True, iterations=700, val_every=50,
                                 val_tasks=200, test_inner_steps=1, probe_every=0, checkpoint_every=100,
                                 test_tasks=100, tasks_at_once=8),
    # The same with 2600 meta-updates (0.109 s each, validations included), 3 test-time steps and a validation
    # every 100. Measured curves (200 validation tasks; wall seconds from Start), seed 0: 0.90 at 67 s, 0.95 at
    # 175 s, 0.955 at the end, 287 s; seed 1: 0.90 at 78 s, 0.95 at 185 s, 0.961 at the end, 287 s. The checkpoints
    # at the end scored 95.16 +- 0.38 % and 95.29 +- 0.38 % (seed 0), 95.28 +- 0.36 % and 95.52 +- 0.37 % (seed 1)
    # on two sets of 1000 validation tasks each. Tried and dropped: 48 channels, 5 queries and 1300 meta-updates
    # (0.24 s each: 0.94 after 216 s, then flat; 94.3 +- 0.4 % at the end), 64 channels (0.92 after 5 min), 2
    # inner steps (0.90), an outer learning rate of 0.005 (0.93), 2400 meta-updates (94.84 +- 0.40 %, 270 s).
    "5-minute class demo": dict(algorithm="maml", channels=32, blocks=4, queries=3, meta_batch=16, outer_lr=0.01,
                                learned_inner_lr=True, cosine_annealing=True, iterations=2600, val_every=100,
                                val_tasks=200, probe_every=0, checkpoint_every=100, test_tasks=100,
                                tasks_at_once=8),
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
# a run (runs.start): wall time from Start, loading included (issue 16). The class demos with a load average of 1
# to 3 (issue 15; scripts/time_to_accuracy.py), the others of 8 to 10 and over a few meta-updates only.
ABOUT = {
    "90-second class demo": "Measured: validation accuracy 85 % after 31 s, 90 % after 66 s, 90.6 % at the end, "
                            "after 84 s (90.7 ± 0.4 % on 2,000 tasks).",
    "5-minute class demo": "Measured: validation accuracy 90 % after 1.1 to 1.3 min, 95 % after 2.9 to 3.1 min, "
                           "95.2 to 95.5 % at the end, after 4.8 min (1,000 tasks, two runs).",
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
