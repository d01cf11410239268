"""Datasets and the input pipeline: what each dataset is (catalog), the CIFAR binary format,
class-per-folder image trees, packed MindRecord shards (their format, writer and reader), generated
data, a user's own images (the one decoding rule), and the augmented, batched pipelines on
MindSpore's dataset engine."""
