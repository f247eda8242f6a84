"""Corpus statistics for locate-then-edit methods: C = E[k kᵀ] of MLP keys, cached on disk."""
from .corpus import Corpus, CorpusError, iter_token_chunks, read_corpus, resolve_corpus, wikitext_detokenize
from .second_moment import cache_path, layer_second_moment, layers_second_moment

__all__ = ["Corpus", "CorpusError", "iter_token_chunks", "read_corpus", "resolve_corpus", "wikitext_detokenize",
           "cache_path", "layer_second_moment", "layers_second_moment"]
