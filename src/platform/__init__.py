"""Where the code runs and how it speaks: the device and its CPU settings, the compiled-graph
cache, downloads, safe file writing, deleting only what no process holds, and the one-line errors
and log lines a person reads."""
