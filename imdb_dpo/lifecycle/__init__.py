"""The run lifecycle every stage shares: a run's folder, lock, settings and manifest, its checkpoints, resume and
stop on a signal, skip once finished, replace only on --overwrite, and its tracking."""
