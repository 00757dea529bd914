"""Translation: a bidirectional GRU encoder and an attention GRU decoder with beam search, scored with sacreBLEU."""
