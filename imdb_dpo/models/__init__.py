"""Models: loading and positions, sampling with a stream per sample, the generation copy, and the rewards."""
