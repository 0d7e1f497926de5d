"""Layer 4: the sequence models (the Decision Transformer), their losses, optimiser, context batching and
checkpoints."""
