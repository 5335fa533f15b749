"""Parts of the built-in demo corpus (entry point: ``ctal_ds.data.demo_corpus``):
espeak-ng binding, sentence grammar, speakers, prosody, per-layout planners and
metadata writers, and the renderer that writes audio."""
