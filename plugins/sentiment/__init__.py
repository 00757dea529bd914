"""Sentiment analysis: a bidirectional GRU text classifier with calibrated probabilities and visible reasons."""
