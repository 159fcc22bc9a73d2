"""The bottom layer: facts every other layer reads, and plumbing with no knowledge of diffusion or attacks.

- ``choices``: every default and allowed value (one home per fact);
- ``paths``: the repository's folders and the shipped checkpoints' names;
- ``progress``: progress reporting for long runs;
- ``safe_pickle``: the restricted unpickler for files a user supplies;
- ``stored_state``: crash-safe, versioned state files that long runs resume from;
- ``utils``: input checks and small tensor helpers.

Nothing is imported here, so ``import rdc_lib.core.choices`` stays light (no torch).
"""
