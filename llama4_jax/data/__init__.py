"""Data: the embedded default corpus, a byte-level BPE trainer and the Llama 4 tokenizer and chat format."""
