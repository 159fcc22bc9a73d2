"""Studies and the computations behind them (the layer above the evaluation).

- ``study``: the denoiser study (candidates, robust settings, rows);
- ``theory``: the optimal denoiser and classifier on a finite training set, and their protocol;
- ``nearest_neighbour``: the nearest-neighbour classifier the theory compares against;
- ``analysis``: small measurements that the notebooks' figures plot (tensors in, dataclasses out).

Nothing is imported here; import the submodule you need.
"""
