"""The layout of a training run's folder (``giga-ssl train --output-dir OUT``), which embed, heatmap, the Hub
and the pipeline read. Names only, so that any reader stays light::

    OUT/training_settings.json           the settings the run was started with (a resume compares its own;
                                         giga-ssl train --config reloads them)
    OUT/checkpoints/checkpoint_<step>/   accelerate's save_state (resume with --resume-from-checkpoint)
    OUT/final/                           the exported encoder (AutoModel.from_pretrained) and its
                                         training_summary.json
    OUT/logs/rank<i>.json                what each process saw, and the trackers' logs
"""

CHECKPOINTS_DIRNAME = "checkpoints"
FINAL_DIRNAME = "final"
LOGS_DIRNAME = "logs"
SETTINGS_FILENAME = "training_settings.json"
# In the settings file beside the options: the processes the run was split over (the global batch depends on it).
NUM_PROCESSES = "num_processes"
