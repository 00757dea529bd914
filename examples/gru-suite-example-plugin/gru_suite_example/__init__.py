"""Example GRU Suite task plugin: regress the running mean of random noise sequences."""
