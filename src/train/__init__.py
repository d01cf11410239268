"""A training run: the compiled step (loss, mixed precision, AdamW), the model EMA, the
learning-rate schedule, the train and evaluation loops, data parallelism, the run's state and
folder, its metrics, and ModelArts' copies in and out."""
