"""Everything the entry scripts import besides the model (``model/``) and the input pipeline
(``dataset.py``): configuration, start-up, the training step and loops, checkpoints and files,
logs, the CIFAR file format, weight conversion and export. See the README's project layout."""
