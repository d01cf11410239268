"""Runnable examples of using the repository's model beyond classification."""
