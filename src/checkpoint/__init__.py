"""Models and their checkpoint files: what a checkpoint carries, writing the files of a training
run, and reading a checkpoint back into a model (evaluation, export, inference) or a run (resume)."""
