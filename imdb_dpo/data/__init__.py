"""The data: IMDb reviews and their prompts, the preference pair files, and the tiny preset's generated base."""
