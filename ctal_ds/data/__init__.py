"""Data: corpus readers, demo corpus, tokenizer, features, shards, loader, masking."""
