"""Datasets and the input pipeline: what each dataset is (catalog), the CIFAR binary format,
generated data, a user's own images, and the augmented, batched pipelines on MindSpore's dataset
engine."""
